"""`trtforge proxy --workers N`: N processes listening on one port, stopped together."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import free_port
from triton_helpers import write_engine_dir


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as handle:
            for line in handle.readlines()[1:]:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                    inodes.add(inode)
    return inodes


def _listeners(pids: list[int], port: int) -> list[int]:
    """The processes among `pids` that hold a socket listening on `port`."""
    inodes = _listening_inodes(port)
    holders = []
    for pid in pids:
        if any(link.startswith("socket:[") and link[8:-1] in inodes for link in _fd_links(pid)):
            holders.append(pid)
    return holders


def _fd_links(pid: int) -> list[str]:
    """What `pid`'s open descriptors point at. One that closes while we read is skipped, not the whole
    process: a worker opens and closes descriptors all the time (connections, pipes)."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return []
    links = []
    for fd in fds:
        try:
            links.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue
    return links


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


@pytest.fixture
def workers_proxy(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """`trtforge proxy --workers 2` for an engine directory, Triton absent (the model list needs no Triton)."""
    engine = write_engine_dir(tmp_path / "engine", backend="reference")
    port = free_port()
    command = [sys.executable, "-m", "trtforge", "proxy", str(engine), "--workers", "2"]
    command += ["--port", str(port), "--triton-grpc-port", str(free_port())]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        while len(_listeners(_children(process.pid), port)) < 2:
            assert process.poll() is None, process.stdout.read().decode() if process.stdout else ""
            time.sleep(0.05)
        yield process, port
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        if process.stdout:
            process.stdout.close()


def test_workers_share_the_port_and_stop_together(
    workers_proxy: tuple[subprocess.Popen[bytes], int],
) -> None:
    process, port = workers_proxy
    workers = _listeners(_children(process.pid), port)
    assert len(workers) == 2
    assert process.pid not in _listeners([process.pid], port)  # the supervisor itself serves nothing
    engine_models = [_get(f"http://127.0.0.1:{port}/v1/models") for _ in range(16)]
    assert engine_models == [200] * 16
    assert _get(f"http://127.0.0.1:{port}/health") == 503  # each worker answers; Triton is absent

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) in (0, -signal.SIGTERM)
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists() and _is_alive(pid)]


def test_a_dead_worker_stops_the_others_with_an_error(
    workers_proxy: tuple[subprocess.Popen[bytes], int],
) -> None:
    process, port = workers_proxy
    first, second = _listeners(_children(process.pid), port)
    os.kill(first, signal.SIGKILL)
    code = process.wait(timeout=60)
    output = process.stdout.read().decode() if process.stdout else ""
    assert code == 1, output
    assert "a proxy worker died" in output
    assert "Traceback" not in output
    assert not _is_alive(second)


def _is_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
