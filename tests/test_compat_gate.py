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
