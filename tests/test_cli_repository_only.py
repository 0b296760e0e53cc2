"""`trtforge serve NAME --repository-only DIR`: a self-contained repository and the exact command that serves it."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import free_port
from proxy_fixtures import FAILURE_BOUND_S, wait_while_running
from triton_helpers import write_engine_dir


def _repository_only(name: str, dest: Path, *ports: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "trtforge", "serve", name, "--repository-only", str(dest), *ports]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300)


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=FAILURE_BOUND_S) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def test_tp2_repository_prints_one_tritonserver_per_rank_under_mpirun(tmp_path: Path) -> None:
    engine = write_engine_dir(tmp_path / "engine", backend="tensorrt", tp_size=2)
    result = _repository_only(str(engine), tmp_path / "repo")
    assert result.returncode == 0, result.stderr
    argv = shlex.split(result.stdout.strip().splitlines()[-1])
    if argv[0] == "env":
        argv = argv[next(i for i, a in enumerate(argv[1:], 1) if "=" not in a) :]
    assert Path(argv[0]).name == "mpirun" and argv[1] == "--allow-run-as-root"
    ranks = " ".join(argv[2:]).split(" : ")
    assert len(ranks) == 2
    for rank, args in enumerate(ranks):
        words = args.split()
        assert words[:2] == ["-n", "1"] and Path(words[2]).name == "tritonserver"
        assert f"--model-repository={tmp_path / 'repo'}" in words
        assert "--disable-auto-complete-config" in words
        shm = [w for w in words if w.startswith("--backend-config=python,shm-region-prefix-name=trtforge_")]
        assert len(shm) == 1 and shm[0].endswith(f"_{rank}_")  # one namespace per rank
        worker = {"--model-control-mode=explicit", "--load-model=tensorrt_llm"}
        assert worker <= set(words) if rank else not worker & set(words)
    config = (tmp_path / "repo" / "tensorrt_llm" / "config.pbtxt").read_text()
    assert f'"{engine.absolute()}"' in config  # absolute engine path


@pytest.mark.triton
def test_printed_command_serves_the_repository_as_written(tiny_engine: Path, tmp_path: Path) -> None:
    links = Path(os.environ["TRTLLM_ENGINE_PATH"])
    links.mkdir(parents=True, exist_ok=True)
    (links / "tiny").symlink_to(tiny_engine)
    http, grpc, metrics = free_port(), free_port(), free_port()
    dest = tmp_path / "elsewhere" / "repo"
    ports = [
        "--triton-http-port",
        str(http),
        "--triton-grpc-port",
        str(grpc),
        "--triton-metrics-port",
        str(metrics),
    ]
    result = _repository_only("tiny", dest, *ports)
    assert result.returncode == 0, result.stderr
    # Self-contained: every python model is inside the repository.
    for model in ("preprocessing", "postprocessing", "tensorrt_llm"):
        assert (dest / model / "1" / "model.py").is_file()
    argv = shlex.split(result.stdout.strip().splitlines()[-1])
    process = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, cwd=tmp_path
    )
    try:
        wait_while_running(process, lambda: _ready(f"http://127.0.0.1:{http}/v2/health/ready"), what="Triton")
        for model in ("ensemble", "tensorrt_llm", "preprocessing", "postprocessing"):
            assert _ready(f"http://127.0.0.1:{http}/v2/models/{model}/ready"), model
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
