"""PyTorch-backend entries end to end: `build` prepares a store entry from the checkpoint (no builder), auto backend.

TensorRT-LLM is the stand-in: `tests/standins/trtllm13` (1.3.0, no TensorRT backend, no `trtllm-bench`),
`tests/standins` (1.0.0 with the stand-in `trtllm-bench build`, which records its pids in
$TRTFORGE_STANDIN_PIDFILE when started), or a package of any version written by `_trtllm_of`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from checkpoints import write_nvfp4_checkpoint
from trtforge.builder.backend_choice import TensorrtBackendGoneError, choose_backend, entry_backend
from trtforge.builder.pipeline import ensure_engine, plan_build
from trtforge.catalog import CatalogEntry, add_entry, load_catalog
from trtforge.cli import app
from trtforge.engine import read_engine
from trtforge.errors import CatalogError, GpuError
from trtforge.store.entries import EngineStore
from trtforge.store.links import resolve_engine, verify_engine

STANDINS = Path(__file__).parent / "standins"
TRTLLM13 = STANDINS / "trtllm13"
LIMITS = {"quantization": "NVFP4", "max_seq_len": 2048, "max_num_tokens": 2048}


def _trtllm_of(root: Path, version: str) -> Path:
    """A `tensorrt_llm` package of `version` (all the version probe reads) under `root`; returns `root`."""
    package = root / "tensorrt_llm"
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text("")
    (package / "version.py").write_text(f'__version__ = "{version}"\n')
    return root


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    return write_nvfp4_checkpoint(tmp_path / "small-nvfp4", tiny=True)


@pytest.fixture
def on_13(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, checkpoint: Path) -> Path:
    """TensorRT-LLM 1.3 installed, a Blackwell target, catalogue entry `small` (backend auto); the pidfile."""
    monkeypatch.setenv("PYTHONPATH", str(TRTLLM13))
    monkeypatch.setenv("TRTFORGE_GPU_ARCH", "sm100")
    pidfile = tmp_path / "builder.pids"
    monkeypatch.setenv("TRTFORGE_STANDIN_PIDFILE", str(pidfile))
    add_entry("small", model=str(checkpoint), **LIMITS)
    return pidfile


def test_build_on_13_prepares_a_verified_pytorch_entry_with_hard_links(on_13: Path, checkpoint: Path) -> None:
    result = ensure_engine("small")
    assert (result.backend, result.cached) == ("pytorch", False)
    assert result.path.parent == EngineStore().root
    assert result.path.name == f"{result.hash}-trtllm-engine-small-1.3.0"
    assert resolve_engine("small") == result.path

    # The weights (and every other checkpoint file) are the checkpoint's own inodes: nothing copied.
    shards = sorted(checkpoint.glob("*.safetensors"))
    assert shards
    for name in [*(shard.name for shard in shards), "config.json", "hf_quant_config.json"]:
        ours, theirs = (result.path / "checkpoint" / name).stat(), (checkpoint / name).stat()
        assert (ours.st_dev, ours.st_ino) == (theirs.st_dev, theirs.st_ino), name

    options = yaml.safe_load((result.path / "llm_api_options.yaml").read_text())
    assert options == {
        "max_batch_size": 8,
        "max_num_tokens": 2048,
        "max_seq_len": 2048,
        "tensor_parallel_size": 1,
        "pipeline_parallel_size": 1,
        "kv_cache_config": {"free_gpu_memory_fraction": 0.9},
        "guided_decoding_backend": "xgrammar",
        "cuda_graph_config": {"batch_sizes": [1, 2, 3, 4, 5, 6, 7, 8]},
    }

    info = read_engine(result.path)
    assert info.backend == "pytorch" and info.trtllm_version == "1.3.0"
    assert (info.architecture, info.dtype, info.quant_algo, info.kv_cache_quant_algo) == (
        "Qwen3ForCausalLM",
        "bfloat16",
        "NVFP4",
        "FP8",
    )
    assert (info.max_batch_size, info.max_seq_len, info.max_num_tokens, info.max_input_len) == (
        8,
        2048,
        2048,
        2047,
    )
    assert info.gather_generation_logits and info.world_size == 1
    assert info.checkpoint_dir == result.path / "checkpoint"
    assert info.llm_api_options_path == result.path / "llm_api_options.yaml"

    # What the proxy reads sits at the top, as in an engine directory.
    assert (result.path / "chat_template.jinja").read_text() == (
        checkpoint / "chat_template.jinja"
    ).read_text()
    assert (result.path / "tokenizer.json").read_bytes() == (checkpoint / "tokenizer.json").read_bytes()
    assert "encoded_vocab" in json.loads((result.path / "xgrammar_tokenizer_info.json").read_text())

    manifest = json.loads((result.path / "trtforge.json").read_text())
    assert manifest["backend"] == "pytorch" and manifest["command"] == []
    assert manifest["inputs"]["gpu_arch"] == "any"  # compiled for no GPU: the same entry serves on any
    assert manifest["inputs"]["builder_version"] == "1.3.0"
    assert manifest["inputs"]["spec"]["backend"] == "pytorch"
    assert manifest["inputs"]["spec"]["llm_api_options"] == options
    assert f"checkpoint/{shards[0].name}" in manifest["files"]
    assert "prepare_s" in manifest["timings"]
    verify_engine("small")

    again = ensure_engine("small")
    assert again.cached and again.path == result.path
    assert not on_13.exists()  # no builder was ever started
    tmp = EngineStore().root / "tmp"
    assert not tmp.exists() or list(tmp.iterdir()) == []


def test_pytorch_on_a_tensorrt_capable_version_starts_no_builder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, checkpoint: Path
) -> None:
    # TensorRT-LLM 1.0 has `trtllm-bench build` (the stand-in records its pid when it starts): --backend pytorch
    # must still only prepare the entry.
    monkeypatch.setenv("PYTHONPATH", str(STANDINS))
    monkeypatch.setenv("TRTFORGE_GPU_ARCH", "sm100")
    pidfile = tmp_path / "builder.pids"
    monkeypatch.setenv("TRTFORGE_STANDIN_PIDFILE", str(pidfile))
    add_entry("small", model=str(checkpoint), **LIMITS)
    result = ensure_engine("small", backend="pytorch")
    assert result.backend == "pytorch" and result.path.name.endswith("-small-1.0.0")
    assert read_engine(result.path).backend == "pytorch"
    assert not pidfile.exists()

    # "auto" on 1.0 is an engine, hashed exactly as an explicit backend = "tensorrt" is.
    entry = load_catalog().get("small")
    auto = plan_build(entry)
    assert auto.backend == "tensorrt"
    assert auto.hash == plan_build(entry.model_copy(update={"backend": "tensorrt"})).hash


def test_hash_covers_arguments_version_backend_and_checkpoint(
    on_13: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, checkpoint: Path
) -> None:
    entry = load_catalog().get("small")
    base = plan_build(entry)
    assert base.backend == "pytorch"
    assert plan_build(entry).hash == base.hash
    # Not compiled for a GPU: another target arch is the same entry.
    assert plan_build(entry, gpu_arch="sm120").hash == base.hash
    # The LLM API arguments: an entry limit, and the serve table's KV share they carry.
    assert plan_build(entry.model_copy(update={"max_batch_size": 4})).hash != base.hash
    shared = plan_build(load_catalog().get("small").resolved("pytorch"))
    assert shared.hash == base.hash
    add_entry(
        "small", model=str(checkpoint), replace=True, serve={"kv_cache_free_gpu_mem_fraction": 0.5}, **LIMITS
    )
    half = plan_build(load_catalog().get("small"))
    assert half.hash != base.hash and half.llm_api is not None
    assert half.llm_api.kv_cache_config.free_gpu_memory_fraction == 0.5
    # The TensorRT-LLM version it is prepared for.
    monkeypatch.setenv("PYTHONPATH", str(_trtllm_of(tmp_path / "v131", "1.3.1")))
    assert plan_build(entry).hash != base.hash
    # The backend: on 1.2 the same entry is an engine by default, a PyTorch entry when asked.
    monkeypatch.setenv("PYTHONPATH", str(_trtllm_of(tmp_path / "v12", "1.2.0")))
    as_engine, as_pytorch = plan_build(entry), plan_build(entry, backend="pytorch")
    assert (as_engine.backend, as_pytorch.backend) == ("tensorrt", "pytorch")
    assert as_engine.hash != as_pytorch.hash
    # The checkpoint's content.
    monkeypatch.setenv("PYTHONPATH", str(TRTLLM13))
    shard = sorted(checkpoint.glob("*.safetensors"))[0]
    with open(shard, "r+b") as handle:
        handle.seek(-1, os.SEEK_END)
        handle.write(b"\x07")
    assert plan_build(entry).hash != base.hash


def test_engine_entry_on_13_is_refused_in_one_line_before_any_hash(
    on_13: Path, checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_entry("engine", model=str(checkpoint), backend="tensorrt", **LIMITS)
    env = {**os.environ, "COLUMNS": "300"}
    result = subprocess.run(
        [sys.executable, "-m", "trtforge", "build", "engine"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 1, (
        result.stderr
    )  # as the build's other refusals (no TensorRT-LLM, a failed build)
    # The progress line says where it stopped (planning); the refusal is one line, nothing follows it.
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error:") and sum(line.startswith("error:") for line in lines) == 1, lines
    assert 'backend = "pytorch"' in lines[-1] and "TensorRT-LLM 1.3.0 has no TensorRT backend" in lines[-1]
    assert "Traceback" not in result.stderr and result.stdout == ""

    def walk_files(root: Path, **_: object) -> None:
        raise AssertionError(f"hashing {root} before the refusal")

    monkeypatch.setattr("trtforge.untrusted.walk_files", walk_files)
    with pytest.raises(TensorrtBackendGoneError):
        plan_build(load_catalog().get("engine"))
    with pytest.raises(TensorrtBackendGoneError):  # --backend tensorrt over an auto entry too
        plan_build(load_catalog().get("small"), backend="tensorrt")
    assert not on_13.exists()


def test_pytorch_preflight_refuses_before_hashing_and_knows_its_own_architectures(
    on_13: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    moe = write_nvfp4_checkpoint(
        tmp_path / "moe", tiny=True, config={"architectures": ["Qwen3MoeForCausalLM"]}
    )
    add_entry("moe", model=str(moe), **LIMITS)
    # Qwen3-MoE is outside the TensorRT-engine flow but runs on the PyTorch backend: not refused there.
    assert plan_build(load_catalog().get("moe")).backend == "pytorch"

    def walk_files(root: Path, **_: object) -> None:
        raise AssertionError(f"hashing {root} before its refusal")

    monkeypatch.setattr("trtforge.untrusted.walk_files", walk_files)
    with pytest.raises(GpuError, match=r"NVFP4 needs compute capability ≥ 10\.0"):
        plan_build(load_catalog().get("small"), gpu_arch="sm90")


def test_without_a_gpu_the_entry_is_still_prepared(on_13: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Nothing runs on a GPU to prepare it (an engine build refuses here: it must know its target).
    monkeypatch.delenv("TRTFORGE_GPU_ARCH")
    plan = plan_build(load_catalog().get("small"))
    assert plan.backend == "pytorch" and plan.inputs.gpu_arch == "any"
    # What serving asks before building: the same answer, without planning a build.
    assert entry_backend(load_catalog().get("small")) == "pytorch"
    monkeypatch.setenv("PYTHONPATH", str(STANDINS))
    assert entry_backend(load_catalog().get("small")) == "tensorrt"


def test_gc_removes_an_unlinked_entry_and_leaves_the_checkpoint(on_13: Path, checkpoint: Path) -> None:
    result = ensure_engine("small")
    shard = sorted(checkpoint.glob("*.safetensors"))[0]
    before = shard.read_bytes()
    assert shard.stat().st_nlink == 2  # the checkpoint's name and the entry's
    resolve_engine("small")
    link = Path(os.environ["TRTLLM_ENGINE_PATH"]) / "small"
    link.unlink()
    store = EngineStore()
    plan = store.plan_gc()
    assert [entry.path for entry in plan.entries] == [result.path]
    assert plan.execute() > 0
    assert not result.path.exists()
    assert shard.read_bytes() == before and shard.stat().st_nlink == 1


def test_verify_finds_a_changed_argument_file(on_13: Path) -> None:
    result = ensure_engine("small")
    options = result.path / "llm_api_options.yaml"
    options.write_text(options.read_text().replace("max_batch_size: 8", "max_batch_size: 9"))
    report = EngineStore().verify(result.path)
    assert report.problems == ("llm_api_options.yaml: changed (sha256 differs)",)
    assert EngineStore().find(result.hash) == result.path  # same size: the cheap check cannot tell


def test_across_filesystems_the_checkpoint_is_copied(on_13: Path, tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs /dev/shm on another filesystem than the store")
    elsewhere = write_nvfp4_checkpoint(
        shm / f"trtforge-test-{os.getpid()}-{tmp_path.name}", tiny=True, sparse=False
    )
    try:
        add_entry("copied", model=str(elsewhere), **LIMITS)
        result = ensure_engine("copied")
        shard = sorted(elsewhere.glob("*.safetensors"))[0]
        ours = (result.path / "checkpoint" / shard.name).stat()
        assert ours.st_ino != shard.stat().st_ino and ours.st_dev != shard.stat().st_dev
        assert (result.path / "checkpoint" / shard.name).read_bytes() == shard.read_bytes()
        verify_engine("copied")
    finally:
        import shutil

        shutil.rmtree(elsewhere, ignore_errors=True)


def test_engines_and_plan_show_the_backend(on_13: Path) -> None:
    ensure_engine("small")
    listed = CliRunner().invoke(app, ["engines", "--json"])
    assert listed.exit_code == 0, listed.output
    [row] = json.loads(listed.stdout)
    assert (row["name"], row["backend"]) == ("small", "pytorch")
    table = CliRunner().invoke(app, ["engines"])
    assert "pytorch" in table.output

    planned = CliRunner().invoke(app, ["plan", "small", "--gpu", "B200", "--json"])
    assert planned.exit_code == 0, planned.output
    data = json.loads(planned.stdout)
    assert (data["backend"], data["requested_backend"], data["trtllm_version"]) == (
        "pytorch",
        "auto",
        "1.3.0",
    )
    assert data["cuda_graph_batch_sizes"] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert data["cuda_graph_bytes"] == 8 * 200 * 1000**2
    assert data["trtllm_bench"] == {}
    human = CliRunner().invoke(app, ["plan", "small", "--gpu", "B200"])
    assert "pytorch (auto, TensorRT-LLM 1.3.0)" in human.output and "CUDA graphs" in human.output

    as_engine = CliRunner().invoke(app, ["plan", "small", "--gpu", "B200", "--backend", "tensorrt", "--json"])
    # What `build --backend tensorrt` refuses on 1.3 (the console script prints it as one line, exit 1).
    assert isinstance(as_engine.exception, TensorrtBackendGoneError)
    assert 'backend = "pytorch"' in str(as_engine.exception) and as_engine.exception.exit_code == 1


def test_auto_resolution_by_version() -> None:
    entry = CatalogEntry(name="q", model="org/Q", quantization="NVFP4")
    assert entry.backend == "auto"
    versions = ("1.0.0", "1.2.1", "1.3.0rc5", None)
    chosen = {version: choose_backend(entry, "auto", version).backend for version in versions}
    # 1.3.0rc5 predates the removal: it still builds engines.
    assert chosen == {"1.0.0": "tensorrt", "1.2.1": "tensorrt", "1.3.0rc5": "tensorrt", None: "tensorrt"}
    for version in ("1.3.0", "1.3.0rc23", "2.0.0"):
        assert choose_backend(entry, "auto", version).backend == "pytorch"
    assert choose_backend(entry, "pytorch", "1.0.0").backend == "pytorch"  # 1.x has the PyTorch backend too
    with pytest.raises(TensorrtBackendGoneError, match=r'set backend = "pytorch".*\[engines\.q\]'):
        choose_backend(entry, "tensorrt", "1.3.0")
    # An entry whose settings only an engine takes cannot become a PyTorch entry silently.
    with_flags = CatalogEntry(name="q", model="org/Q", builder_options={"max_beam_width": 2})
    with pytest.raises(CatalogError, match="builder_options"):
        choose_backend(with_flags, "auto", "1.3.0")
    with pytest.raises(ValueError, match="ep_size is a setting of the PyTorch backend"):
        CatalogEntry(name="q", model="org/Q", backend="tensorrt", ep_size=2)


def test_expert_parallelism_reaches_the_arguments_only_when_set(on_13: Path, checkpoint: Path) -> None:
    plan = plan_build(load_catalog().get("small"))
    assert plan.llm_api is not None and "moe_expert_parallel_size" not in plan.llm_api.to_dict()
    assert "ep_size" not in plan.inputs.spec
    add_entry("small", model=str(checkpoint), replace=True, ep_size=1, **LIMITS)
    with_ep = plan_build(load_catalog().get("small"))
    assert with_ep.llm_api is not None and with_ep.llm_api.to_dict()["moe_expert_parallel_size"] == 1
    assert with_ep.hash != plan.hash


def test_push_and_substitution_carry_the_whole_entry(
    on_13: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, checkpoint: Path
) -> None:
    from trtforge.cache.transfer import push_entry

    url = f"file://{tmp_path / 'shared'}"
    built = ensure_engine("small")
    pushed = push_entry(built.path, url)
    assert pushed.transferred_bytes == pushed.total_bytes > 0

    # Another machine: no TensorRT-LLM, only the version it serves; the cache has the entry.
    monkeypatch.setenv("TRTFORGE_HOME", str(tmp_path / "b" / "home"))
    monkeypatch.setenv("TRTLLM_ENGINE_PATH", str(tmp_path / "b" / "links"))
    monkeypatch.delenv("PYTHONPATH")
    monkeypatch.setenv("TRTFORGE_TRTLLM_VERSION", "1.3.0")
    monkeypatch.setenv("TRTFORGE_SUBSTITUTERS", url)
    pulled = ensure_engine("small", allow_unsigned=True)
    assert pulled.substituted_from == url and pulled.hash == built.hash
    assert pulled.path.name == built.path.name and pulled.path != built.path
    shard = sorted(checkpoint.glob("*.safetensors"))[0].name
    assert (pulled.path / "checkpoint" / shard).read_bytes() == (
        built.path / "checkpoint" / shard
    ).read_bytes()
    assert read_engine(pulled.path).backend == "pytorch"
    verify_engine("small")
    assert not on_13.exists()


def test_engines_built_before_the_pytorch_backend_keep_their_hashes() -> None:
    # An engine's hash is over these fields (and revision, version, arch) exactly as before "auto" and ep_size
    # existed: auto is resolved before hashing, an unset ep_size is left out.
    entry = CatalogEntry(name="q", model="org/Q", quantization="NVFP4").resolved("tensorrt")
    assert entry.build_fields() == {
        "name": "q",
        "model": "org/Q",
        "revision": None,
        "quantization": "NVFP4",
        "tp_size": 1,
        "pp_size": 1,
        "max_batch_size": 8,
        "max_seq_len": 16384,
        "max_num_tokens": 8192,
        "backend": "tensorrt",
        "trust_remote_code": False,
        "builder_options": {},
    }


_LOAD_ENTRY = """
import sys, yaml
from pathlib import Path
from tensorrt_llm import LLM, SamplingParams

if __name__ == "__main__":
    entry = Path(sys.argv[1])
    options = yaml.safe_load((entry / "llm_api_options.yaml").read_text())
    with LLM(model=str(entry / "checkpoint"), **options) as llm:
        out = llm.generate_async([1, 2, 3], SamplingParams(max_tokens=3)).result()
    print("tokens", len(out.outputs[0].token_ids))
"""


def test_the_entry_loads_in_the_llm_api_with_its_own_arguments(on_13: Path, tmp_path: Path) -> None:
    # The 1.3 stand-in's LLM refuses unknown arguments as the real one does: the YAML is TorchLlmArgs as is.
    dense = write_nvfp4_checkpoint(tmp_path / "dense", tiny=True, sparse=False)
    add_entry("dense", model=str(dense), quantization="NVFP4", max_seq_len=256, max_num_tokens=256)
    entry = ensure_engine("dense").path
    script = tmp_path / "load.py"
    script.write_text(_LOAD_ENTRY)
    done = subprocess.run(
        [sys.executable, str(script), str(entry)], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "tokens 3"
