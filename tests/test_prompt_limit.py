"""The prompt limit: TensorRT-LLM's rule (`trtforge.prompt_limit`) branch by branch, read from untrusted engine
configs, the LLM API model's copy of it, where the `enable_chunked_context` serve option counts (the served
repository, the serving plan, never the store hash), and the 400 for log probabilities without generation logits.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from typer.testing import CliRunner

from proxy_fixtures import write_tokenizer_dir
from triton_helpers import write_engine_dir
from trtforge.builder.pipeline import plan_build
from trtforge.catalog import load_catalog
from trtforge.cli import app
from trtforge.engine import BENCH_PLUGIN_CONFIG, read_engine
from trtforge.errors import InvalidEngineError, UsageError
from trtforge.prompt_limit import (
    BUILD_CONFIG_MAX_INPUT_LEN,
    RuntimeLimits,
    bench_engine_limits,
    engine_runtime_limits,
    llm_api_arguments_prompt_limit,
    llm_api_prompt_limit,
)
from trtforge.proxy.backend import TritonBackend
from trtforge.proxy.errors import InvalidRequestError
from trtforge.proxy.protocol import ChatCompletionRequest, CompletionRequest
from trtforge.proxy.serving import OpenAIServing
from trtforge.proxy.settings import ProxySettings
from trtforge.proxy.tokenizer import ProxyTokenizer
from trtforge.serve_options import ServeOptions
from trtforge.triton.distribution import find_tritonserver
from trtforge.triton.repository import write_model_repository

STANDINS = Path(__file__).parent / "standins"
# The sizes of issue 18: a 16k context, 8k tokens a forward pass, BuildConfig's max_input_len.
SIZES = {"max_seq_len": 16384, "max_num_tokens": 8192}


def bench_build_config(*, max_seq_len: int, max_num_tokens: int, max_batch_size: int = 8) -> dict[str, Any]:
    """`build_config` exactly as the `trtllm-bench build` stand-in writes it into config.json for these sizes
    (run in a process of its own: its `tensorrt_llm` package must not meet the 1.3 stand-in's in this one)."""
    code = (
        "import json, sys; from tensorrt_llm.commands.bench import engine_config; "
        f"print(json.dumps(engine_config({{}}, {{}}, 1, 1, {max_batch_size}, {max_num_tokens}, {max_seq_len})))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(STANDINS), "PATH": "/usr/bin:/bin"},
        check=True,
    )
    return dict(json.loads(done.stdout.splitlines()[-1])["build_config"])  # after the version banner


@pytest.fixture(scope="module")
def bench_config() -> dict[str, Any]:
    return {"pretrained_config": {}, "build_config": bench_build_config(**SIZES)}


# --- the rule, branch by branch -----------------------------------------------------------------------------------


def test_trtllm_bench_engines_take_the_context_with_chunked_context_else_max_num_tokens(
    bench_config: dict[str, Any],
) -> None:
    assert bench_config["build_config"]["max_input_len"] == BUILD_CONFIG_MAX_INPUT_LEN == 1024
    limits = engine_runtime_limits(bench_config)
    assert limits == bench_engine_limits(**SIZES)  # what `plan` assumes is what the builder writes
    assert limits.chunked_context_possible
    # Chunked context: max_seq_len - 1.
    assert limits.prompt_limit(chunked_context=True) == 16383
    assert limits.prompt_limit_rule(chunked_context=True) == "max_seq_len - 1: chunked context"
    # Context FMHA and packed input: min(max_seq_len - 1, max_num_tokens); never build_config.max_input_len.
    assert limits.prompt_limit(chunked_context=False) == 8192
    assert limits.prompt_limit_rule(chunked_context=False).startswith("min(max_seq_len - 1, max_num_tokens)")
    # max_num_tokens above the context: the context's room decides.
    wide = RuntimeLimits(max_seq_len=4096, max_num_tokens=8192, max_input_len=1024)
    assert wide.prompt_limit(chunked_context=False) == 4095


@pytest.mark.parametrize("plugin", ["context_fmha", "remove_input_padding"])
def test_without_context_fmha_or_packed_input_the_limit_is_max_input_len(
    bench_config: dict[str, Any], plugin: str
) -> None:
    config = json.loads(json.dumps(bench_config))
    config["build_config"]["plugin_config"][plugin] = False
    limits = engine_runtime_limits(config)
    assert limits.prompt_limit(chunked_context=False) == 1024
    assert limits.prompt_limit_rule(chunked_context=False).startswith("build_config.max_input_len")
    # max_input_len above the context never exceeds the room for one generated token.
    assert (
        RuntimeLimits(
            max_seq_len=512, max_num_tokens=512, max_input_len=1024, context_fmha=False
        ).prompt_limit(chunked_context=False)
        == 511
    )


@pytest.mark.parametrize("plugin", ["context_fmha", "paged_kv_cache", "use_paged_context_fmha"])
def test_chunked_context_needs_all_three_attention_plugins(bench_config: dict[str, Any], plugin: str) -> None:
    config = json.loads(json.dumps(bench_config))
    del config["build_config"]["plugin_config"][plugin]
    assert not engine_runtime_limits(config).chunked_context_possible


def test_the_repository_refuses_chunked_context_an_engine_cannot_take(tmp_path: Path) -> None:
    plugins = {**BENCH_PLUGIN_CONFIG, "use_paged_context_fmha": False}
    engine = read_engine(write_engine_dir(tmp_path / "e", backend="reference", plugin_config=plugins))
    assert not engine.chunked_context(None)  # the default stays off where the engine cannot take it
    assert engine.prompt_limit() == min(255, engine.max_num_tokens)
    with pytest.raises(UsageError, match="enable_chunked_context=true does not fit"):
        write_model_repository(
            {"e": engine}, tmp_path / "repo", options={"e": ServeOptions(enable_chunked_context=True)}
        )


# --- untrusted configs --------------------------------------------------------------------------------------------


def test_missing_fields_take_the_runtimes_fallbacks_and_never_a_larger_limit() -> None:
    bare = engine_runtime_limits({"pretrained_config": {"max_position_embeddings": 2048}, "build_config": {}})
    assert (bare.max_seq_len, bare.max_num_tokens, bare.max_input_len) == (2048, 2048, 1024)
    # No plugin_config (or one that is not a table, or values that are not `true`): every plugin counts as off.
    assert not bare.chunked_context_possible and bare.prompt_limit(chunked_context=False) == 1024
    for plugins in ([], "on", {"context_fmha": "true", "remove_input_padding": 1}):
        odd = engine_runtime_limits({"build_config": {"max_seq_len": 4096, "plugin_config": plugins}})
        assert not odd.context_fmha and not odd.packed_input
        assert odd.prompt_limit(chunked_context=False) == 1024
    # Tables that are not tables count as missing.
    assert (
        engine_runtime_limits({"build_config": {"max_seq_len": 64}, "pretrained_config": []}).max_seq_len
        == 64
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_seq_len", "16384"),
        ("max_seq_len", 1),
        ("max_num_tokens", 0),
        ("max_num_tokens", -5),
        ("max_input_len", 1.5),
        ("max_input_len", True),
        ("max_seq_len", ["x" * 100]),
    ],
)
def test_odd_sizes_are_refused_in_one_line_naming_the_field(
    tmp_path: Path, field: str, value: object
) -> None:
    config = {"build_config": {"max_seq_len": 4096, field: value}}
    with pytest.raises(ValueError, match=f"build_config.{field} is ") as refused:
        engine_runtime_limits(config)
    assert "\n" not in str(refused.value) and len(str(refused.value)) < 200
    # read_engine says it as an invalid engine, naming the file.
    engine_dir = write_engine_dir(tmp_path / "e", backend="reference")
    engine_config = json.loads((engine_dir / "config.json").read_text())
    engine_config["build_config"][field] = value
    (engine_dir / "config.json").write_text(json.dumps(engine_config))
    with pytest.raises(InvalidEngineError, match=f"config.json: build_config.{field} is "):
        read_engine(engine_dir)


def test_no_context_length_at_all_is_refused() -> None:
    with pytest.raises(ValueError, match="max_seq_len is missing"):
        engine_runtime_limits({"build_config": {}, "pretrained_config": {}})


# --- the LLM API (PyTorch backend) --------------------------------------------------------------------------------


def test_the_llm_api_rule_is_the_packed_input_rule_with_chunked_prefill_for_chunked_context() -> None:
    assert llm_api_prompt_limit(**SIZES) == 8192
    assert llm_api_prompt_limit(**SIZES, chunked_prefill=True) == 16383
    assert llm_api_prompt_limit(max_seq_len=512, max_num_tokens=8192) == 511
    # LLM(...) arguments: TorchLlmArgs' defaults where they are silent (max_num_tokens 8192, the model's context).
    checkpoint = {"max_position_embeddings": 40960}
    assert llm_api_arguments_prompt_limit({}, checkpoint) == 8192
    assert llm_api_arguments_prompt_limit({"enable_chunked_prefill": True}, checkpoint) == 40959
    assert llm_api_arguments_prompt_limit(SIZES, {"text_config": checkpoint}) == 8192
    assert llm_api_arguments_prompt_limit({"max_seq_len": 300, "max_num_tokens": 512}, {}) == 299
    with pytest.raises(ValueError, match=r"llm_api_options\.max_num_tokens is 'many'"):
        llm_api_arguments_prompt_limit({"max_num_tokens": "many"}, checkpoint)


@contextlib.contextmanager
def _module_from(directory: Path, name: str) -> Iterator[ModuleType]:
    """`directory/model.py` imported as Triton's python stub does: its directory first on sys.path."""
    utils_dir = str(find_tritonserver().backend_dir / "python")  # triton_python_backend_utils
    added = [path for path in (str(directory), utils_dir) if path not in sys.path]
    sys.path[:0] = added
    shadowed = {key: sys.modules.pop(key) for key in ("prompt_limit",) if key in sys.modules}
    try:
        spec = importlib.util.spec_from_file_location(name, directory / "model.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # its dataclasses look their module up there
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(name, None)
        for path in added:
            sys.path.remove(path)
        sys.modules.pop("prompt_limit", None)
        sys.modules.update(shadowed)


@pytest.mark.parametrize("chunked_prefill", [False, True])
def test_the_llm_api_model_enforces_the_limit_the_proxy_states(tmp_path: Path, chunked_prefill: bool) -> None:
    """The LLM API model, as the repository ships it (prompt_limit.py beside it), limits prompts by the rule the
    proxy's settings give, from the entry's own LLM arguments."""
    entry_dir = write_engine_dir(tmp_path / "entry", backend="pytorch")
    options = {"max_batch_size": 4, "max_seq_len": 256, "max_num_tokens": 100}
    if chunked_prefill:
        options["enable_chunked_prefill"] = True
    (entry_dir / "llm_api_options.yaml").write_text("".join(f"{k}: {v}\n" for k, v in options.items()))
    facts = json.loads((entry_dir / "llmapi_entry.json").read_text())
    (entry_dir / "llmapi_entry.json").write_text(json.dumps({**facts, "max_num_tokens": 100}))
    (entry_dir / "checkpoint" / "config.json").write_text(json.dumps({"vocab_size": 77}))
    engine = read_engine(entry_dir)
    version_dir = write_model_repository({"e": engine}, tmp_path / "repo") / "tensorrt_llm" / "1"
    shipped = Path(str(importlib.util.find_spec("trtforge.prompt_limit").origin))  # type: ignore[union-attr]
    assert (version_dir / "prompt_limit.py").read_bytes() == shipped.read_bytes()
    with _module_from(version_dir, f"trtforge_test_llmapi_model_{chunked_prefill}") as model:
        loaded = model.load_options(engine.llm_api_options_path)
        longest, vocab = model._checkpoint_limits(engine.checkpoint_dir, loaded)
    assert vocab == 77
    if chunked_prefill:
        assert longest == 255  # max_seq_len - 1
    else:
        # min(max_seq_len - 1, max_num_tokens): what trtforge states for the entries it prepares, which never
        # turn chunked prefill on.
        assert longest == 100 == engine.prompt_limit()
        assert ProxySettings.from_engine("e", engine, "127.0.0.1:1").max_input_len == 100


# --- where the serve option counts --------------------------------------------------------------------------------


def _parameters(config: Path) -> dict[str, str]:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    parsed = model_config_pb2.ModelConfig()
    text_format.Parse(config.read_text(), parsed)
    return {key: value.string_value for key, value in parsed.parameters.items()}


def test_enable_chunked_context_enters_the_served_repository_and_plan_never_the_store_hash(
    tmp_path: Path,
) -> None:
    from trtforge.serving.plan import ServedEngine

    tiny = load_catalog().get("tiny")
    off = tiny.model_copy(update={"serve": ServeOptions(enable_chunked_context=False)})
    # A serve option is not a build input: the same engine serves either way.
    assert plan_build(tiny).hash == plan_build(off).hash

    engine_dir = write_engine_dir(tmp_path / "e", backend="reference")  # max_seq_len 256, max_num_tokens 128
    engine = read_engine(engine_dir)
    limits = {}
    for label, options in {"default": ServeOptions(), "off": off.serve}.items():
        repo = write_model_repository({"e": engine}, tmp_path / label, options={"e": options})
        trtllm = _parameters(repo / "tensorrt_llm" / "config.pbtxt")
        preprocessing = _parameters(repo / "preprocessing" / "config.pbtxt")
        served = ServedEngine("e", engine, options, "tensorrt_llm", "none", "none")
        limits[label] = (
            trtllm["enable_chunked_context"],
            preprocessing["max_input_len"],
            served.prompt_limit,
        )
    # Always written (the backend's own default is off), and the limits follow it.
    assert limits == {"default": ("true", "255", 255), "off": ("false", "128", 128)}


# --- log probabilities without generation logits (issue 18, part 5) -----------------------------------------------


def test_top_logprobs_without_generation_logits_is_a_400_naming_the_catalogue_option(tmp_path: Path) -> None:
    engine_dir = write_tokenizer_dir(tmp_path / "engine")
    settings = ProxySettings(
        model_name="qwen",
        engine_dir=engine_dir,
        triton_grpc_url="127.0.0.1:1",
        max_seq_len=64,
        max_input_len=40,
        generation_logits=False,
    )
    backend = TritonBackend(settings.triton_grpc_url, settings.triton_model, request_timeout_s=1)
    serving = OpenAIServing(settings, ProxyTokenizer.load(engine_dir), backend)
    chat = ChatCompletionRequest.model_validate(
        {
            "model": "qwen",
            "messages": [{"role": "user", "content": "hi"}],
            "logprobs": True,
            "top_logprobs": 2,
        }
    )
    with pytest.raises(InvalidRequestError) as refused:
        serving.prepare_chat(chat)
    message = refused.value.message
    assert refused.value.param == "top_logprobs"
    assert "gather_generation_logits = true" in message and "[engines.qwen]" in message
    assert "trtllm-build" not in message  # trtforge never runs it
    completion = CompletionRequest.model_validate({"model": "qwen", "prompt": "hi", "logprobs": 2})
    with pytest.raises(InvalidRequestError, match=r"logprobs 2 needs .*\[engines\.qwen\]"):
        serving.prepare_completion(completion)
    # The chosen tokens' own log probabilities need no build option.
    chosen = chat.model_copy(update={"top_logprobs": 0})
    assert serving.prepare_chat(chosen).generations


# --- inspect of a built engine ------------------------------------------------------------------------------------


def test_inspect_of_an_engine_states_its_prompt_limit_under_its_serve_table(tmp_path: Path) -> None:
    engine_dir = write_engine_dir(tmp_path / "engine", backend="reference")
    config = json.loads((engine_dir / "config.json").read_text())
    config["build_config"] = bench_build_config(**SIZES)
    (engine_dir / "config.json").write_text(json.dumps(config))

    shown = CliRunner().invoke(app, ["inspect", str(engine_dir), "--json"])
    assert shown.exit_code == 0, shown.output
    facts = json.loads(shown.stdout)
    assert (facts["max_input_len"], facts["chunked_context"], facts["prompt_limit"]) == (1024, True, 16383)
    human = CliRunner().invoke(app, ["inspect", str(engine_dir)])
    assert "prompt limit: 16,383 tokens (max_seq_len - 1: chunked context)" in human.output.splitlines()

    # By its name, the catalogue entry's serve table decides.
    links = Path(os.environ["TRTLLM_ENGINE_PATH"])
    links.mkdir(parents=True, exist_ok=True)
    (links / "qwen").symlink_to(engine_dir)
    Path(os.environ["TRTFORGE_CATALOG"]).write_text(
        '[engines.qwen]\nmodel = "org/Qwen"\n[engines.qwen.serve]\nenable_chunked_context = false\n'
    )
    shown = CliRunner().invoke(app, ["inspect", "qwen", "--json"])
    assert shown.exit_code == 0, shown.output
    facts = json.loads(shown.stdout)
    assert (facts["chunked_context"], facts["prompt_limit"]) == (False, 8192)
