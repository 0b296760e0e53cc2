from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from trtforge.builder.command import build_command, resolve_launcher
from trtforge.builder.failures import classify_failure
from trtforge.catalog import CatalogEntry
from trtforge.errors import BuildFailedError, UsageError
from trtforge.trtllm import probe_trtllm_version, resolve_python

STANDINS = Path(__file__).parent / "standins"


def test_hub_model_command_is_spelled_like_the_reference(tmp_path: Path) -> None:
    entry = CatalogEntry(
        name="q", model="nvidia/Qwen3-32B-NVFP4", quantization="NVFP4", trust_remote_code=True
    )
    command = build_command(
        entry,
        python="/py",
        launcher="none",
        workspace=tmp_path,
        model_path=None,
        revision="a" * 40,
        base_env={},
    )
    assert list(command.argv) == [
        "/py", "-m", "tensorrt_llm.commands.bench",
        "--model", "nvidia/Qwen3-32B-NVFP4", "--workspace", str(tmp_path), "--revision", "a" * 40,
        "build", "--quantization", "NVFP4", "--tp_size", "1", "--pp_size", "1",
        "--max_batch_size", "8", "--max_num_tokens", "8192", "--max_seq_len", "16384",
        "--trust_remote_code", "True",
    ]  # fmt: skip
    assert command.engine_dir == tmp_path / "nvidia/Qwen3-32B-NVFP4" / "tp_1_pp_1"
    assert command.env["TLLM_WORKER_USE_SINGLE_PROCESS"] == "1"
    assert command.env["OMPI_MCA_btl_tcp_if_include"] == "lo"
    assert command.env["OMPI_MCA_oob_tcp_if_include"] == "lo"


def test_local_checkpoint_uses_the_name_and_model_path(tmp_path: Path) -> None:
    entry = CatalogEntry(name="mine", model=str(tmp_path), tp_size=2, builder_options={"max_beam_width": 2})
    command = build_command(
        entry,
        python="/py",
        launcher="none",
        workspace=tmp_path / "ws",
        model_path=tmp_path,
        revision=None,
        base_env={},
    )
    argv = list(command.argv)
    assert argv[argv.index("--model") + 1] == "mine"
    assert argv[argv.index("--model_path") + 1] == str(tmp_path)
    assert argv.index("--workspace") < argv.index("build") < argv.index("--tp_size")
    assert argv[-2:] == ["--max_beam_width", "2"]
    assert "--quantization" not in argv and "--trust_remote_code" not in argv
    assert command.engine_dir == tmp_path / "ws" / "mine" / "tp_2_pp_1"
    assert "TLLM_WORKER_USE_SINGLE_PROCESS" not in command.env or os.environ.get(
        "TLLM_WORKER_USE_SINGLE_PROCESS"
    )


def test_launcher(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "bin"
    fake.mkdir()
    mpirun = fake / "mpirun"
    mpirun.write_text("#!/bin/sh\n")
    mpirun.chmod(0o755)
    monkeypatch.setenv("PATH", str(fake))
    assert resolve_launcher("auto") == (str(mpirun), "-np", "1", "--allow-run-as-root")
    assert resolve_launcher("none") == ()
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    assert resolve_launcher("auto") == ()
    with pytest.raises(UsageError, match="mpirun"):
        resolve_launcher("mpirun")


def test_python_choice_and_version_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_python(None) == sys.executable
    monkeypatch.setenv("TRTFORGE_TRTLLM_PYTHON", "/no/such/python")
    with pytest.raises(UsageError, match="/no/such/python"):
        resolve_python(None)
    assert resolve_python(sys.executable) == sys.executable
    env = {**os.environ, "PYTHONPATH": str(STANDINS)}
    assert probe_trtllm_version(sys.executable, env) == "1.0.0"
    with pytest.raises(BuildFailedError, match="--trtllm-python"):
        probe_trtllm_version(sys.executable, {k: v for k, v in os.environ.items() if k != "PYTHONPATH"})


@pytest.mark.parametrize(
    ("text", "cause"),
    [
        ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", "out_of_gpu_memory"),
        ("[TensorRT-LLM][ERROR] Assertion failed: Arch unsupported for CUTLASS FP4 GEMM", "arch_unsupported"),
        ("huggingface_hub.errors.GatedRepoError: 401 Client Error.", "gated_model"),
        ("OSError: [Errno 28] No space left on device", "disk_full"),
        ("Segmentation fault (core dumped)", "unknown"),
    ],
)
def test_failure_classification(text: str, cause: str) -> None:
    assert classify_failure(f"line before\n{text}\nline after").cause == cause


@pytest.mark.parametrize("flags", [["--timeout", "0"], ["--stall-timeout", "-5"]])
def test_cli_build_refuses_non_positive_limits_before_anything_runs(flags: list[str]) -> None:
    from typer.testing import CliRunner

    from trtforge.cli import app

    result = CliRunner().invoke(app, ["build", "no-such-entry", *flags])
    assert isinstance(result.exception, UsageError), result.output
    assert flags[0] in str(result.exception)
