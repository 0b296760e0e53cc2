"""The generated model repository: parseable configs, the TRT-LLM contract, atomic replacement."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

import trtforge.reference
import trtforge.triton
from triton_helpers import load_bundled_model, write_engine_dir, write_tokenizer
from trtforge.engine import read_engine
from trtforge.errors import UsageError
from trtforge.serve_options import merge_serve_options
from trtforge.triton.repository import MARKER, RepositoryOptions, model_configs, write_model_repository

MODELS = ("tensorrt_llm", "preprocessing", "postprocessing", "ensemble")


def _parse(path: Path) -> model_config_pb2.ModelConfig:
    config = model_config_pb2.ModelConfig()
    text_format.Parse(path.read_text(), config)
    return config


@pytest.fixture
def trt_engine(tmp_path: Path):
    return read_engine(write_engine_dir(tmp_path / "engine", backend="tensorrt", max_batch_size=6))


def test_every_config_parses_as_model_config_without_placeholders(trt_engine, tmp_path: Path) -> None:
    repo = write_model_repository({"engine": trt_engine}, tmp_path / "repo")
    for name in MODELS:
        text = (repo / name / "config.pbtxt").read_text()
        assert "${" not in text and "}$" not in text
        config = _parse(repo / name / "config.pbtxt")
        assert config.name == name
        assert config.max_batch_size == 6  # all share the engine's max_batch_size


def test_tensorrt_engine_uses_the_tensorrtllm_backend_with_the_real_contract(
    trt_engine, tmp_path: Path
) -> None:
    repo = write_model_repository({"engine": trt_engine}, tmp_path / "repo")
    config = _parse(repo / "tensorrt_llm" / "config.pbtxt")
    assert config.backend == "tensorrtllm"
    assert config.model_transaction_policy.decoupled is True
    assert not (repo / "tensorrt_llm" / "1" / "model.py").exists()
    assert (repo / "tensorrt_llm" / "1").is_dir()

    inputs = {tensor.name: tensor for tensor in config.input}
    required = {name for name, tensor in inputs.items() if not tensor.optional}
    assert required == {"input_lengths", "request_output_len"}  # input_ids is optional, as in NVIDIA's config
    assert inputs["input_ids"].data_type == model_config_pb2.TYPE_INT32
    assert list(inputs["input_ids"].dims) == [-1]
    assert inputs["input_ids"].allow_ragged_batch
    for scalar in ("input_lengths", "request_output_len", "end_id", "pad_id", "streaming", "temperature"):
        assert list(inputs[scalar].dims) == [1]
        assert inputs[scalar].HasField("reshape") and list(inputs[scalar].reshape.shape) == []
    assert inputs["streaming"].data_type == model_config_pb2.TYPE_BOOL
    assert inputs["seed"].data_type == model_config_pb2.TYPE_UINT64
    assert list(inputs["stop_words_list"].dims) == [2, -1]
    assert inputs["runtime_top_k"].data_type == model_config_pb2.TYPE_INT32
    assert inputs["runtime_top_p"].data_type == model_config_pb2.TYPE_FP32

    outputs = {tensor.name: tensor for tensor in config.output}
    assert list(outputs["output_ids"].dims) == [-1, -1]
    assert list(outputs["sequence_length"].dims) == [-1]

    params = {key: value.string_value for key, value in config.parameters.items()}
    assert params["gpt_model_type"] == "inflight_fused_batching"
    assert params["gpt_model_path"] == str(trt_engine.path.absolute())
    assert Path(params["gpt_model_path"]).is_absolute()
    assert params["max_beam_width"] == "1"
    assert params["exclude_input_in_output"] == "true"
    assert params["cancellation_check_period_ms"] == "100"
    # Unset serve options leave the backend's defaults.
    for name in (
        "decoding_mode",
        "kv_cache_free_gpu_mem_fraction",
        "batch_scheduler_policy",
        "enable_kv_cache_reuse",
    ):
        assert name not in params


def test_options_reach_the_parameters(trt_engine) -> None:
    options = RepositoryOptions(
        kv_cache_free_gpu_mem_fraction=0.5,
        enable_kv_cache_reuse=True,
        batch_scheduler_policy="max_utilization",
        decoding_mode="top_k_top_p",
        exclude_input_in_output=False,
    )
    config = model_config_pb2.ModelConfig()
    text_format.Parse(model_configs({"engine": trt_engine}, {"engine": options})["tensorrt_llm"], config)
    params = {key: value.string_value for key, value in config.parameters.items()}
    assert params["kv_cache_free_gpu_mem_fraction"] == "0.5"
    assert params["enable_kv_cache_reuse"] == "true"
    assert params["batch_scheduler_policy"] == "max_utilization"
    assert params["decoding_mode"] == "top_k_top_p"
    assert params["exclude_input_in_output"] == "false"
    with pytest.raises(UsageError, match=r"kv_cache_free_gpu_mem_fraction: .*less than or equal to 1"):
        merge_serve_options(None, {"kv_cache_free_gpu_mem_fraction": "1.5"})


def test_reference_engine_uses_the_python_backend_with_the_same_tensors(tmp_path: Path) -> None:
    trt = read_engine(write_engine_dir(tmp_path / "trt", backend="tensorrt"))
    reference = read_engine(write_engine_dir(tmp_path / "ref", backend="reference"))
    trt_config, ref_config = model_config_pb2.ModelConfig(), model_config_pb2.ModelConfig()
    text_format.Parse(model_configs({"trt": trt})["tensorrt_llm"], trt_config)
    text_format.Parse(model_configs({"reference": reference})["tensorrt_llm"], ref_config)
    assert ref_config.backend == "python"
    assert list(ref_config.input) == list(trt_config.input)
    assert list(ref_config.output) == list(trt_config.output)
    assert ref_config.model_transaction_policy.decoupled is True


def test_pytorch_entry_is_the_llm_api_model_with_the_same_tensors(tmp_path: Path) -> None:
    trt = read_engine(write_engine_dir(tmp_path / "trt", backend="tensorrt", max_batch_size=6))
    entry = read_engine(write_engine_dir(tmp_path / "entry", backend="pytorch", max_batch_size=6))
    assert entry.backend == "pytorch"
    repo = write_model_repository({"qwen": entry}, tmp_path / "repo")
    config = _parse(repo / "tensorrt_llm" / "config.pbtxt")
    trt_config = model_config_pb2.ModelConfig()
    text_format.Parse(model_configs({"trt": trt})["tensorrt_llm"], trt_config)
    assert config.backend == "python" and config.model_transaction_policy.decoupled is True
    # The proxy sends every backend the same tensors.
    assert list(config.input) == list(trt_config.input)
    assert list(config.output) == list(trt_config.output)
    assert [group.count for group in config.instance_group] == [1]  # one LLM, whatever its ranks
    params = {key: value.string_value for key, value in config.parameters.items()}
    assert params == {
        "checkpoint_dir": str((tmp_path / "entry" / "checkpoint").absolute()),
        "llm_api_options": str((tmp_path / "entry" / "llm_api_options.yaml").absolute()),
        "exclude_input_in_output": "true",
        "cancellation_check_period_ms": "100",
    }
    models = Path(trtforge.triton.__file__).parent / "models"
    for name, source in {
        "model.py": models / "tensorrt_llm_llmapi" / "model.py",
        "llmapi_sampling.py": models / "tensorrt_llm_llmapi" / "llmapi_sampling.py",
        "trtllm_contract.py": models / "common" / "trtllm_contract.py",
    }.items():
        assert (repo / "tensorrt_llm" / "1" / name).read_bytes() == source.read_bytes(), name
    # The text models read the tokenizer at the entry's top, as for engines.
    assert {*MODELS, "tensorrt_llm_bls"} <= {p.name for p in repo.iterdir()}
    marker = json.loads((repo / MARKER).read_text())
    assert marker["engines"]["qwen"]["backend"] == "pytorch"


def test_pytorch_entries_refuse_the_engine_backends_knobs_and_share_a_triton_at_one_rank(
    tmp_path: Path,
) -> None:
    entry = read_engine(write_engine_dir(tmp_path / "entry", backend="pytorch"))
    for option in ({"enable_kv_cache_reuse": "true"}, {"gpu_device_ids": "0"}):
        opts = merge_serve_options(None, option)
        with pytest.raises(UsageError, match=f"serve option {next(iter(option))} does not apply to pytorch"):
            model_configs({"qwen": entry}, {"qwen": opts})
    # The KV share went into the entry's LLM API arguments at build: a serve table may keep it.
    shared = merge_serve_options(None, {"kv_cache_free_gpu_mem_fraction": "0.5", "max_queue_size": "3"})
    assert "free_gpu_mem" not in model_configs({"qwen": entry}, {"qwen": shared})["tensorrt_llm"]

    reference = read_engine(write_engine_dir(tmp_path / "ref", backend="reference"))
    assert set(model_configs({"qwen": entry, "ref": reference})) == {"tensorrt_llm-qwen", "tensorrt_llm-ref"}
    tp2 = read_engine(write_engine_dir(tmp_path / "tp2", backend="pytorch", tp_size=2))
    assert set(model_configs({"big": tp2})) >= {"tensorrt_llm"}  # alone: one model, its own workers
    with pytest.raises(UsageError, match="engine 'big' has 2 ranks"):
        model_configs({"big": tp2, "ref": reference})


def test_ensemble_wires_every_step_and_covers_the_stock_interface(trt_engine, tmp_path: Path) -> None:
    repo = write_model_repository({"engine": trt_engine}, tmp_path / "repo")
    configs = {name: _parse(repo / name / "config.pbtxt") for name in MODELS}
    ensemble = configs["ensemble"]
    assert ensemble.platform == "ensemble"
    names = {tensor.name for tensor in ensemble.input}
    assert {"text_input", "max_tokens", "bad_words", "stop_words", "end_id", "pad_id", "temperature"} <= names
    assert {"top_k", "top_p", "stream", "exclude_input_in_output"} <= names
    assert "text_output" in {tensor.name for tensor in ensemble.output}

    # Every mapped key is a real tensor of its step, and every step input the ensemble needs is produced.
    produced = set(names)
    for step in ensemble.ensemble_scheduling.step:
        model = configs[step.model_name]
        model_inputs = {tensor.name: tensor for tensor in model.input}
        assert set(step.input_map) <= set(model_inputs)
        assert {name for name, tensor in model_inputs.items() if not tensor.optional} <= set(step.input_map)
        assert set(step.input_map.values()) <= produced
        assert set(step.output_map) <= {tensor.name for tensor in model.output}
        produced |= set(step.output_map.values())
    assert {tensor.name for tensor in ensemble.output} <= produced


def test_pre_and_postprocessing_are_our_self_contained_models(trt_engine, tmp_path: Path) -> None:
    repo = write_model_repository({"engine": trt_engine}, tmp_path / "repo")
    for name in ("preprocessing", "postprocessing"):
        source = (repo / name / "1" / "model.py").read_text()
        imports = [line for line in source.splitlines() if line.startswith(("import ", "from "))]
        assert not [line for line in imports if "trtforge" in line]  # runs where trtforge is not installed
        config = _parse(repo / name / "config.pbtxt")
        assert config.backend == "python"
        params = {key: value.string_value for key, value in config.parameters.items()}
        assert params["tokenizer_dir"] == str(trt_engine.path.absolute())


def test_rewrite_replaces_an_older_repository_atomically(trt_engine, tmp_path: Path) -> None:
    dest = tmp_path / "repo"
    write_model_repository({"engine": trt_engine}, dest)
    (dest / "stale_model").mkdir()
    write_model_repository(
        {"engine": trt_engine}, dest, options={"engine": RepositoryOptions(enable_kv_cache_reuse=True)}
    )
    assert not (dest / "stale_model").exists()
    assert (
        json.loads((dest / MARKER).read_text())["engines"]["engine"]["options"]["enable_kv_cache_reuse"]
        is True
    )
    # Nothing left behind beside it: no staging or old copies.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["engine", "repo"]


def test_refuses_to_replace_a_directory_it_did_not_generate(trt_engine, tmp_path: Path) -> None:
    dest = tmp_path / "mine"
    dest.mkdir()
    (dest / "precious.txt").write_text("keep me")
    with pytest.raises(UsageError, match="not a model repository generated by trtforge"):
        write_model_repository({"engine": trt_engine}, dest)
    assert (dest / "precious.txt").read_text() == "keep me"


def test_postprocessing_bytes_join_to_the_exact_text(tmp_path: Path) -> None:
    post = load_bundled_model("postprocessing")
    tokenizer = write_tokenizer(tmp_path / "tok")
    assert post.decoder_kind(tokenizer) == "byte_level"
    table = post.token_byte_table(tokenizer)
    text = "  Hello wörld, 日本語 🚀 — naïve\n\tend"
    ids = tokenizer.encode(text, add_special_tokens=False)
    # One token at a time, as a stream delivers them: fragments may split characters, the join never does.
    fragments = [post.tokens_to_bytes(table, [token]) for token in ids]
    assert b"".join(fragments) == text.encode("utf-8")
    assert any(_is_partial_utf8(fragment) for fragment in fragments)  # the case the stock model mangles
    # Special tokens are skipped by default and kept on request.
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert post.tokens_to_bytes(table, [*ids, eos]) == text.encode("utf-8")
    kept = post.token_byte_table(tokenizer, skip_special_tokens=False)
    assert post.tokens_to_bytes(kept, [eos]) == b"<|im_end|>"
    assert post.tokens_to_bytes(table, [10**6, -1]) == b""


def test_preprocessing_word_lists_use_the_trtllm_layout(tmp_path: Path) -> None:
    pre = load_bundled_model("preprocessing")
    tokenizer = write_tokenizer(tmp_path / "tok")
    words = np.array([[b"stop,never"], [b""]], dtype=object)
    out = pre.word_list(tokenizer, words, 2)
    stop = tokenizer.encode("stop", add_special_tokens=False)
    never = tokenizer.encode("never", add_special_tokens=False)
    width = len(stop) + len(never)
    assert out.shape == (2, 2, width) and out.dtype == np.int32
    assert out[0, 0].tolist() == stop + never
    assert out[0, 1].tolist() == [len(stop), width] + [-1] * (width - 2)
    assert out[1, 1].tolist() == [-1] * width
    assert pre.word_list(tokenizer, None, 3).shape == (3, 2, 0)
    assert pre.split_words(np.array([b'"a, b",c', b"d"], dtype=object)) == ["a, b", "c", "d"]


def test_reference_repository_carries_the_reference_backend_model(tmp_path: Path) -> None:
    engine = read_engine(write_engine_dir(tmp_path / "ref", backend="reference"))
    repo = write_model_repository({"engine": engine}, tmp_path / "repo")
    reference = Path(trtforge.reference.__file__).parent / "backend_model.py"
    version_dir = repo / "tensorrt_llm" / "1"
    assert (version_dir / "model.py").read_bytes() == reference.read_bytes()
    contract = (
        Path(trtforge.reference.__file__).parents[1] / "triton" / "models" / "common" / "trtllm_contract.py"
    )
    assert (version_dir / "trtllm_contract.py").read_bytes() == contract.read_bytes()
    for sibling in ("refbackend_scheduler.py", "refbackend_decoder.py", "refbackend_guides.py"):
        assert (version_dir / sibling).read_bytes() == (reference.parent / sibling).read_bytes()


def test_the_reference_model_finds_every_sibling_it_imports_and_none_shadows_a_module(tmp_path: Path) -> None:
    """Triton runs model.py with its version directory first on sys.path: each name a file there imports must be
    a file there, and no file there may hide an installed module of the same name."""
    engine = read_engine(write_engine_dir(tmp_path / "ref", backend="reference"))
    version_dir = write_model_repository({"engine": engine}, tmp_path / "repo") / "tensorrt_llm" / "1"
    files = {path.stem for path in version_dir.glob("*.py")}
    imported = {name for path in version_dir.glob("*.py") for name in _runtime_imports(path.read_text())}
    installed = _installed_modules(imported | files)
    not_installed = imported - installed
    # Only Triton's python backend provides triton_python_backend_utils; every other name is a file beside model.py.
    assert files - {"model"} == not_installed - {"triton_python_backend_utils"}
    assert sorted(files & installed) == []


def _installed_modules(names: set[str]) -> set[str]:
    """Which of `names` a fresh interpreter of this environment can import: asked in a subprocess, because tests
    in this process may have put model directories on sys.path or imported siblings already."""
    probe = "import importlib.util, json, sys; print(json.dumps([n for n in json.loads(sys.argv[1]) if importlib.util.find_spec(n)]))"
    done = subprocess.run(
        [sys.executable, "-c", probe, json.dumps(sorted(names))], capture_output=True, text=True, check=True
    )
    return set(json.loads(done.stdout))


def _runtime_imports(source: str) -> set[str]:
    """The top-level modules a file imports when it runs (those under `if TYPE_CHECKING:` are for mypy only)."""
    tree = ast.parse(source)
    for_mypy = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
        for statement in node.body
        for inner in ast.walk(statement)
    }
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in for_mypy:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def _is_partial_utf8(fragment: bytes) -> bool:
    try:
        fragment.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False
