"""The compatibility gate: an engine built for another TensorRT-LLM or GPU is refused in one line before Triton."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from triton_helpers import write_engine_dir
from trtforge.engine import read_engine
from trtforge.gpu import GpuInfo
from trtforge.triton.compat import (
    EngineTarget,
    IncompatibleEngineError,
    InstalledBackend,
    check_compatibility,
    engine_target,
    gate,
)

STANDINS = Path(__file__).parent / "standins"


def _gpu(index: int, name: str, capability: tuple[int, int]) -> GpuInfo:
    return GpuInfo(index, name, capability, 80 << 30, 79 << 30, "580.00")


B200 = (10, 0)
H100 = (9, 0)


def _engine(tmp_path: Path, *, tp_size: int = 1, version: str = "1.0.0", arch: str | None = "sm100"):
    path = write_engine_dir(tmp_path / "engine", backend="tensorrt", tp_size=tp_size, version=version)
    if arch is not None:
        manifest = {
            "name": "qwen",
            "hash": "0" * 32,
            "backend": "tensorrt",
            "builder_version": version,
            "inputs": {"gpu_arch": arch, "builder_version": version},
            "files": {},
            "created_at": "2026-01-01T00:00:00Z",
        }
        (path / "trtforge.json").write_text(json.dumps(manifest))
    return read_engine(path)


def test_matching_engine_passes_and_reads_both_sides(tmp_path: Path) -> None:
    engine = _engine(tmp_path, tp_size=2)
    target = engine_target(engine)
    assert target == EngineTarget("1.0.0", "sm100")
    here = InstalledBackend("1.0.0", [_gpu(0, "NVIDIA B200", B200), _gpu(1, "NVIDIA B200", B200)])
    assert check_compatibility("qwen", engine, target, here) == []
    assert gate("qwen", engine, installed=here) == []


def test_each_mismatch_is_one_line_naming_both_sides_and_the_fix(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    target = engine_target(engine)
    b200 = [_gpu(0, "NVIDIA B200", B200)]

    [version] = check_compatibility("qwen", engine, target, InstalledBackend("1.1.0", b200))
    assert "built with TensorRT-LLM 1.0.0" in version and "installed backend is TensorRT-LLM 1.1.0" in version
    assert "trtforge build qwen" in version and "trtllm-python-py3" in version

    [arch] = check_compatibility(
        "qwen", engine, target, InstalledBackend("1.0.0", [_gpu(0, "NVIDIA H100", H100)])
    )
    assert arch.startswith("engine 'qwen' was built for sm100 GPUs, but GPU 0 NVIDIA H100 is sm90")
    assert "trtforge build qwen" in arch

    [none] = check_compatibility("qwen", engine, target, InstalledBackend("1.0.0", []))
    assert "needs 1 GPU(s)" in none and "NVML sees 0" in none

    [missing] = check_compatibility("qwen", engine, target, InstalledBackend(None, b200))
    assert "needs TensorRT-LLM 1.0.0, but no TensorRT-LLM is installed here" in missing

    [ids] = check_compatibility("qwen", engine, target, InstalledBackend("1.0.0", b200), device_ids=[3])
    assert "gpu_device_ids names GPU 3" in ids

    # The GPUs the engine will use are the ones checked: GPU 1 is a B200, GPU 0 is not.
    mixed = InstalledBackend("1.0.0", [_gpu(0, "NVIDIA H100", H100), _gpu(1, "NVIDIA B200", B200)])
    assert check_compatibility("qwen", engine, target, mixed, device_ids=[1]) == []
    assert check_compatibility("qwen", engine, target, mixed) != []

    for problem in (version, arch, none, missing, ids):
        assert "\n" not in problem


def test_tp2_needs_two_gpus_and_force_turns_refusal_into_warnings(tmp_path: Path) -> None:
    engine = _engine(tmp_path, tp_size=2)
    one = InstalledBackend("1.0.0", [_gpu(0, "NVIDIA B200", B200)])
    with pytest.raises(
        IncompatibleEngineError, match=r"needs 2 GPU\(s\) \(tp 2 × pp 1\).*--force starts it anyway"
    ):
        gate("qwen", engine, installed=one)
    [warning] = gate("qwen", engine, installed=one, force=True)
    assert "needs 2 GPU(s)" in warning


def test_engine_without_manifest_is_checked_on_version_only(tmp_path: Path) -> None:
    engine = _engine(tmp_path, arch=None)
    assert engine_target(engine) == EngineTarget("1.0.0", None)
    assert (
        check_compatibility(
            "e", engine, engine_target(engine), InstalledBackend("1.0.0", [_gpu(0, "X", H100)])
        )
        == []
    )


def test_reference_engines_have_nothing_to_check(tmp_path: Path) -> None:
    engine = read_engine(write_engine_dir(tmp_path / "ref", backend="reference"))
    assert gate("tiny", engine, installed=InstalledBackend(None, [])) == []


def _serve(engine_dir: Path, gpus: str, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        # The stand-in TensorRT-LLM (version 1.0.0) and an NVML reporting `gpus`.
        "PYTHONPATH": os.pathsep.join([str(STANDINS), str(STANDINS / "nvml")]),
        "TRTFORGE_STANDIN_GPUS": gpus,
    }
    argv = [sys.executable, "-m", "trtforge", "serve", str(engine_dir), *extra]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)


def test_serve_refuses_another_arch_in_one_line_before_triton_starts(
    isolated_home: Path, tmp_path: Path
) -> None:
    engine = _engine(tmp_path)
    result = _serve(engine.path, "NVIDIA H100 80GB HBM3:9.0:80")
    assert result.returncode == 3, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "built for sm100 GPUs, but GPU 0 NVIDIA H100 80GB HBM3 is sm90" in lines[0]
    assert not (isolated_home / "tmp" / "repositories").exists()  # nothing written, nothing started

    other = _engine(tmp_path / "v2", version="1.2.0")
    result = _serve(other.path, "NVIDIA B200:10.0:183")
    assert result.returncode == 3
    assert "built with TensorRT-LLM 1.2.0, the installed backend is TensorRT-LLM 1.0.0" in result.stderr


def test_serve_force_warns_and_goes_on_to_start(isolated_home: Path, tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    result = _serve(engine.path, "NVIDIA H100 80GB HBM3:9.0:80", "--force")
    assert "warning:" in result.stderr and "is sm90" in result.stderr
    # Past the gate: the repository is written and the launch is attempted; the embedded tritonserver has no
    # tensorrtllm backend, which is the next (one-line) refusal.
    assert result.returncode != 0
    assert "tensorrtllm" in result.stderr and "Traceback" not in result.stderr
    assert (isolated_home / "tmp" / "repositories").is_dir()


def test_engines_older_than_the_contract_are_refused(tmp_path: Path) -> None:
    engine = _engine(tmp_path, version="0.17.0")
    here = InstalledBackend("0.17.0", [_gpu(0, "NVIDIA B200", B200)])
    [problem] = check_compatibility("old", engine, engine_target(engine), here)
    assert "built with TensorRT-LLM 0.17.0" in problem and "0.19 or newer" in problem
    newer = _engine(tmp_path / "new", version="1.2.0rc1")
    assert (
        check_compatibility("new", newer, engine_target(newer), InstalledBackend("1.2.0rc1", here.gpus)) == []
    )


def _pytorch_entry(tmp_path: Path, *, version: str = "1.3.0", tp_size: int = 1, quant: str | None = "NVFP4"):
    """A PyTorch entry as `build` leaves it, as far as `read_engine` and the gate read it."""
    path = tmp_path / f"entry-{version}-{tp_size}-{quant}"
    (path / "checkpoint").mkdir(parents=True)
    (path / "checkpoint" / "config.json").write_text("{}")
    (path / "llm_api_options.yaml").write_text("max_batch_size: 4\n")
    facts = {
        "backend": "pytorch",
        "trtllm_version": version,
        "architecture": "Qwen3ForCausalLM",
        "quant_algo": quant,
        "tp_size": tp_size,
        "max_batch_size": 4,
        "max_seq_len": 2048,
        "max_num_tokens": 2048,
    }
    (path / "llmapi_entry.json").write_text(json.dumps(facts))
    return read_engine(path)


def test_pytorch_entry_is_checked_against_the_installed_version(tmp_path: Path) -> None:
    entry = _pytorch_entry(tmp_path)
    assert entry.backend == "pytorch"
    b200 = [_gpu(0, "NVIDIA B200", B200)]
    warned: list[str] = []
    assert gate("qwen", entry, installed=InstalledBackend("1.3.0", b200), warn=warned.append) == []
    assert warned == []
    # Another minor or patch release: served, with a warning (not a --force refusal).
    assert gate("qwen", entry, installed=InstalledBackend("1.4.1", b200), warn=warned.append) == []
    [warning] = warned
    assert "prepared for TensorRT-LLM 1.3.0, the installed one is 1.4.1" in warning
    # Another major, or none at all: refused in one line; --force lets it through as a warning.
    with pytest.raises(IncompatibleEngineError, match="another major version") as caught:
        gate("qwen", entry, installed=InstalledBackend("2.0.0", b200))
    assert "\n" not in str(caught.value) and "`trtforge build qwen`" in str(caught.value)
    assert len(gate("qwen", entry, installed=InstalledBackend("2.0.0", b200), force=True)) == 1
    with pytest.raises(IncompatibleEngineError, match="no TensorRT-LLM is installed here"):
        gate("qwen", entry, installed=InstalledBackend(None, b200))


def test_pytorch_nvfp4_entry_needs_blackwell_and_enough_gpus(tmp_path: Path) -> None:
    entry = _pytorch_entry(tmp_path, tp_size=2)
    hopper = [_gpu(0, "NVIDIA H100", H100), _gpu(1, "NVIDIA H100", H100)]
    [problem] = check_compatibility("qwen", entry, engine_target(entry), InstalledBackend("1.3.0", hopper))
    assert "cannot run on GPU 0 NVIDIA H100" in problem and "NVFP4 needs compute capability ≥ 10.0" in problem
    one = [_gpu(0, "NVIDIA B200", B200)]
    [problem] = check_compatibility("qwen", entry, engine_target(entry), InstalledBackend("1.3.0", one))
    assert "needs 2 GPU(s)" in problem
    # Not compiled for an arch: any Blackwell part runs it, and an unquantized entry runs on Hopper.
    mixed = [_gpu(0, "NVIDIA B200", B200), _gpu(1, "NVIDIA RTX 5090", (12, 0))]
    assert check_compatibility("qwen", entry, engine_target(entry), InstalledBackend("1.3.0", mixed)) == []
    bf16 = _pytorch_entry(tmp_path, quant=None)
    assert check_compatibility("bf16", bf16, engine_target(bf16), InstalledBackend("1.3.0", hopper)) == []


def test_engine_on_13_is_refused_in_one_line_naming_the_pytorch_backend(tmp_path: Path) -> None:
    engine = _engine(tmp_path, version="1.2.0")
    here = InstalledBackend("1.3.0", [_gpu(0, "NVIDIA H100", H100)])
    [problem] = check_compatibility("qwen", engine, engine_target(engine), here)
    assert 'set backend = "pytorch" in [engines.qwen]' in problem
    assert "TensorRT-LLM 1.3.0 has no TensorRT backend" in problem
    with pytest.raises(IncompatibleEngineError, match='backend = "pytorch"'):
        gate("qwen", engine, installed=here)


def test_serve_of_an_engine_on_the_13_stand_in_is_refused_before_triton(
    isolated_home: Path, tmp_path: Path
) -> None:
    engine = _engine(tmp_path)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(STANDINS / "trtllm13"), str(STANDINS / "nvml")]),
        "TRTFORGE_STANDIN_GPUS": "NVIDIA B200:10.0:183",
        "COLUMNS": "300",
    }
    argv = [sys.executable, "-m", "trtforge", "serve", str(engine.path)]
    result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 3, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and 'backend = "pytorch"' in lines[0], result.stderr
    assert not (isolated_home / "tmp" / "repositories").exists()
