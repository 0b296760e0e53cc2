"""`trtforge up` stopped by SIGINT or SIGTERM mid-stream: the right exit status, the stream ended by the proxy, and
no process it started left once it has exited (it leaves with `os._exit` only after the stack has stopped)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from conftest import free_port, triton_port_args
from proxy_fixtures import STARTUP_FAILURE_BOUND_S, OutputLines, wait_while_running
from trtforge.processes import descendant_processes, start_time

pytestmark = pytest.mark.triton


def _serving(url: str) -> bool:
    try:
        return httpx.get(f"{url}/v1/models", timeout=30).status_code == 200
    except httpx.TransportError:
        return False


@pytest.mark.timeout(STARTUP_FAILURE_BOUND_S + 600)
@pytest.mark.parametrize(("sig", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 128 + signal.SIGTERM)])
def test_up_stopped_by_a_signal_exits_with_its_status_and_leaves_no_process(
    isolated_home: Path, tiny_engine: Path, sig: signal.Signals, status: int
) -> None:
    port = free_port()
    argv = [sys.executable, "-m", "trtforge", "up", str(tiny_engine), "--port", str(port)]
    argv += triton_port_args()
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    body = {"model": str(tiny_engine), "prompt": "fox", "max_tokens": 900, "ignore_eos": True, "stream": True}
    try:
        assert process.stderr is not None
        wait_while_running(
            process,
            lambda: _serving(url),
            what="up to serve",
            output=process.stderr.read,
            failure_bound_s=STARTUP_FAILURE_BOUND_S,
        )
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=120) as response:
            lines = response.iter_lines()
            assert next(line for line in lines if line.startswith("data: "))
            started = descendant_processes(process.pid)
            names = {Path(f"/proc/{pid}/comm").read_text().strip() for pid in started}
            assert "tritonserver" in names, names
            process.send_signal(sig)
            frames = [line.removeprefix("data: ") for line in lines if line]
        assert frames[-1] == "[DONE]"  # the proxy ended the stream itself before it went
        _, stderr = process.communicate(timeout=300)  # bounds a hang only
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == status, stderr
    assert "Traceback" not in stderr
    # At exit, not some time after: everything it started is gone (reaped, or dead and waiting for init).
    left = {pid for pid, start in started.items() if start_time(pid) == start}
    assert left == set(), f"left behind: {left}"


@pytest.mark.timeout(STARTUP_FAILURE_BOUND_S + 600)
@pytest.mark.parametrize("end", ["SIGTERM", "tritonserver killed"])
def test_serve_runs_tritonserver_alone_until_a_signal_or_its_death(
    isolated_home: Path, tiny_engine: Path, end: str
) -> None:
    argv = [sys.executable, "-m", "trtforge", "serve", str(tiny_engine)]
    argv += triton_port_args()
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    output = OutputLines(process.stderr)
    try:
        # Serving once the command says so (tritonserver ready as the stack saw it).
        wait_while_running(
            process,
            lambda: bool(output.first(r"Serving until Ctrl-C\.")),
            what="serve's ready line",
            output=output.all_text,
            failure_bound_s=STARTUP_FAILURE_BOUND_S,
        )
        started = descendant_processes(process.pid)
        [triton] = [pid for pid in started if Path(f"/proc/{pid}/comm").read_text().strip() == "tritonserver"]
        if end == "SIGTERM":
            process.send_signal(signal.SIGTERM)
        else:
            os.kill(triton, signal.SIGKILL)
        process.wait(timeout=300)  # bounds a hang only
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        output.join()  # the pipe's end: every line read
        process.stderr.close()
    stderr = output.text()
    if end == "SIGTERM":
        assert process.returncode == 128 + signal.SIGTERM, stderr
    else:  # no restart by default: one error line naming the status and the log, status 1
        assert process.returncode == 1, stderr
        last = stderr.strip().splitlines()[-1]
        assert last.startswith("error: tritonserver exited with status -9; log: "), stderr
    assert "Traceback" not in stderr
    left = {pid for pid, start in started.items() if start_time(pid) == start}
    assert left == set(), f"left behind: {left}"
