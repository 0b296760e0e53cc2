"""`trtforge proxy --workers N`: N processes listening on one port, stopped together, with one `/metrics` view
and one API key; `--workers auto` derived from the usable cores."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from conftest import free_port
from proxy_fixtures import running_triton, wait_until
from triton_helpers import write_engine_dir
from trtforge.engine import read_engine
from trtforge.proxy.workers import WorkerCount, auto_workers, usable_cores


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
    with _proxy_workers(tmp_path) as started:
        yield started


@contextlib.contextmanager
def _proxy_workers(
    tmp_path: Path, *, api_key: str | None = None, engine: Path | None = None, grpc_port: int | None = None
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """`trtforge proxy ENGINE --workers 2`: by default for a fresh engine directory and no Triton."""
    engine = engine or write_engine_dir(tmp_path / "engine", backend="reference")
    port = free_port()
    command = [sys.executable, "-m", "trtforge", "proxy", str(engine), "--workers", "2"]
    command += ["--port", str(port), "--triton-grpc-port", str(grpc_port or free_port())]
    env = {**os.environ, "TRTFORGE_API_KEY": api_key} if api_key else None
    env = env or {key: value for key, value in os.environ.items() if key != "TRTFORGE_API_KEY"}
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, env=env
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
    metrics_dir = Path(_environ(first)["PROMETHEUS_MULTIPROC_DIR"])
    os.kill(first, signal.SIGKILL)
    code = process.wait(timeout=60)
    output = process.stdout.read().decode() if process.stdout else ""
    assert code == 1, output
    assert "a proxy worker died" in output
    assert "Traceback" not in output
    assert not _is_alive(second)
    assert not metrics_dir.exists()  # removed by the supervisor, the killed worker's files with it


def _is_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


# ------------------------------------------------------------------------------- --workers auto


@pytest.mark.parametrize(
    ("cores", "workers"), [(1, 1), (2, 1), (7, 1), (8, 2), (12, 3), (16, 4), (31, 7), (32, 8), (128, 8)]
)
def test_auto_workers_is_a_quarter_of_the_cores_from_1_to_8(cores: int, workers: int) -> None:
    assert auto_workers(cores) == workers


def test_workers_take_auto_or_a_whole_number() -> None:
    assert WorkerCount.parse("3") == WorkerCount(3)
    assert WorkerCount.parse("3").describe() == "3 workers"
    auto = WorkerCount.parse("auto")
    assert auto == WorkerCount(auto_workers(usable_cores()), auto=True, cores=usable_cores())
    assert auto.describe().endswith(f"(auto: {usable_cores()} usable core{'s' * (usable_cores() != 1)})")
    for bad in ("0", "-1", "1.5", "two", "", "٣"):
        with pytest.raises(ValueError, match="--workers takes `auto` or a whole number of at least 1"):
            WorkerCount.parse(bad)


def test_usable_cores_follow_the_cpu_affinity() -> None:
    """`taskset -c 0`: one usable core, whatever the machine has."""
    first = min(os.sched_getaffinity(0))
    code = "from trtforge.proxy.workers import usable_cores; print(usable_cores())"
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        preexec_fn=lambda: os.sched_setaffinity(0, {first}),
    )
    assert result.stdout.strip() == "1"
    assert 1 <= usable_cores() <= len(os.sched_getaffinity(0))


def test_a_bad_workers_value_is_one_line_before_anything_starts(tmp_path: Path) -> None:
    engine = write_engine_dir(tmp_path / "engine", backend="reference")
    command = [sys.executable, "-m", "trtforge", "proxy", str(engine), "--workers", "0"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == ["error: --workers takes `auto` or a whole number of at least 1, not '0'"], result.stderr


# ------------------------------------------------------------------- metrics and the key across workers


def _serving_worker(connection: http.client.HTTPConnection, port: int, workers: list[int]) -> int | None:
    """The worker among `workers` that accepted `connection` (found through /proc: the established socket
    from the client's port to `port`), or None while none has accepted it yet."""
    return _worker_of(connection.sock.getsockname()[1], port, workers)


def _worker_of(client_port: int, port: int, workers: list[int]) -> int | None:
    """The worker among `workers` holding the connection from `client_port` to `port`, or None."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as handle:
            for line in handle.readlines()[1:]:
                fields = line.split()
                local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
                ours = int(local.rsplit(":", 1)[1], 16) == port and int(remote.rsplit(":", 1)[1], 16)
                if state == "01" and ours == client_port and inode != "0":  # 01: ESTABLISHED
                    inodes.add(inode)
    for pid in workers:
        if any(link.startswith("socket:[") and link[8:-1] in inodes for link in _fd_links(pid)):
            return pid
    return None


def _connection_per_worker(port: int, workers: list[int]) -> dict[int, http.client.HTTPConnection]:
    """One open keep-alive connection to each worker: new connections until the kernel has given each worker
    one (`SO_REUSEPORT` spreads them by a hash of the client's address)."""
    found: dict[int, http.client.HTTPConnection] = {}
    for _ in range(500):
        if len(found) == len(workers):
            return found
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.connect()
        deadline = time.monotonic() + 30
        while (worker := _serving_worker(connection, port, workers)) is None:
            assert time.monotonic() < deadline, "no worker accepted the connection"
            time.sleep(0.01)
        if worker in found:
            connection.close()
        else:
            found[worker] = connection
    raise AssertionError(f"500 connections reached only workers {sorted(found)} of {workers}")


def _call(
    connection: http.client.HTTPConnection,
    method: str,
    path: str,
    body: dict[str, object] | None = None,
    key: str | None = None,
) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    connection.request(method, path, json.dumps(body).encode() if body else None, headers)
    response = connection.getresponse()
    return response.status, response.read()


def _requests_total(text: str, api: str) -> float:
    return _metric(text, "trtforge:requests_total", api=api)


def _environ(pid: int) -> dict[str, str]:
    pairs = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(pair.decode().split("=", 1) for pair in pairs if b"=" in pair)


def test_metrics_and_the_api_key_hold_across_workers(tmp_path: Path) -> None:
    """2 workers, one key: each refuses a missing or wrong key and takes the right one; completions sent to
    both (3 to one, 2 to the other; Triton is absent, so each is a 503, counted once its model resolved) show
    as 5 in `/metrics` from either worker; the shared metrics directory is gone once the proxy stopped."""
    key = "sk-workers-test"
    with contextlib.ExitStack() as stack:
        process, port = stack.enter_context(_proxy_workers(tmp_path, api_key=key))
        workers = _listeners(_children(process.pid), port)
        assert len(workers) == 2
        [metrics_dir] = {Path(_environ(pid)["PROMETHEUS_MULTIPROC_DIR"]) for pid in workers}
        assert metrics_dir.is_dir()
        assert "PROMETHEUS_MULTIPROC_DIR" not in _environ(process.pid)  # the supervisor keeps none for itself
        connections = _connection_per_worker(port, workers)
        for connection in connections.values():
            stack.callback(connection.close)
        model = ""
        for connection in connections.values():
            assert _call(connection, "GET", "/v1/models")[0] == 401
            assert _call(connection, "GET", "/v1/models", key="sk-wrong")[0] == 401
            status, body = _call(connection, "GET", "/v1/models", key=key)
            assert status == 200
            model = json.loads(body)["data"][0]["id"]
        completion = {"model": model, "prompt": "hi", "max_tokens": 4}
        for count, connection in zip((3, 2), connections.values(), strict=True):
            for _ in range(count):
                assert _call(connection, "POST", "/v1/completions", completion)[0] == 401  # not counted
                status, body = _call(connection, "POST", "/v1/completions", completion, key=key)
                assert status == 503, body
        for worker in workers:  # each worker wrote its own counts
            assert (metrics_dir / f"counter_{worker}.db").is_file()
        for connection in connections.values():
            status, body = _call(connection, "GET", "/metrics")  # open without the key, as with one worker
            assert status == 200
            assert _requests_total(body.decode(), "completions") == 5

        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0)
        assert [m.id for m in client.models.list().data] == [model]
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(
                base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-wrong", max_retries=0
            ).models.list()

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) in (0, -signal.SIGTERM)
        assert not metrics_dir.exists()


def _samples(text: str, name: str) -> dict[str, float]:
    """The samples of metric `name` in Prometheus text: labels (as written) → value."""
    found = re.findall(rf"^{re.escape(name)}{{([^}}]*)}} (\S+)$", text, re.MULTILINE)
    return {labels: float(value) for labels, value in found}


def _metric(text: str, name: str, **labels: str) -> float:
    wanted = [f'{key}="{value}"' for key, value in labels.items()]
    return sum(v for found, v in _samples(text, name).items() if all(w in found for w in wanted))


@pytest.mark.triton
def test_generation_metrics_and_gauges_sum_over_the_workers(tiny_engine: Path, tmp_path: Path) -> None:
    """Real generations on both workers (Triton serving the tiny model): the token counters, the finish reasons
    and the latency histograms of `/metrics` are the sums over the workers; a stream running on one worker is
    the one running generation seen from the other (one `livesum` series, no per-process ones), and once its
    client goes, it is gone from the gauge and counted as an abort."""
    with running_triton(read_engine(tiny_engine), tmp_path / "triton") as triton:
        grpc_port = int(triton.grpc_url.rsplit(":", 1)[1])
        with contextlib.ExitStack() as stack:
            process, port = stack.enter_context(
                _proxy_workers(tmp_path, engine=tiny_engine, grpc_port=grpc_port)
            )
            workers = _listeners(_children(process.pid), port)
            connections = _connection_per_worker(port, workers)
            for connection in connections.values():
                stack.callback(connection.close)
            one, other = connections.values()
            model = json.loads(_call(one, "GET", "/v1/models")[1])["data"][0]["id"]
            prompt = {"model": model, "prompt": "The quick brown fox", "temperature": 0}
            usages = []
            for connection, max_tokens in ((one, 5), (one, 7), (other, 6)):
                status, body = _call(
                    connection, "POST", "/v1/completions", {**prompt, "max_tokens": max_tokens}
                )
                assert status == 200, body
                usages.append(json.loads(body)["usage"])

            # A stream that outlasts the test, on the first worker; its first token makes it running.
            streamed = {**prompt, "max_tokens": 900, "ignore_eos": True, "stream": True}
            one.request("POST", "/v1/completions", json.dumps(streamed), {"Content-Type": "application/json"})
            stream = one.getresponse()
            assert stream.status == 200
            while not stream.readline().startswith(b"data: {"):
                pass
            text = _call(other, "GET", "/metrics")[1].decode()
            assert _samples(text, "trtforge:num_requests_running") == {f'model_name="{model}"': 1.0}
            assert _metric(text, "trtforge:num_requests_waiting") == 0
            assert _metric(text, "trtforge:requests_total", api="completions") == 4
            assert _metric(text, "trtforge:prompt_tokens_total") == sum(u["prompt_tokens"] for u in usages)
            assert _metric(text, "trtforge:generation_tokens_total") == sum(
                u["completion_tokens"] for u in usages
            )
            assert _metric(text, "trtforge:request_success_total") == 3
            assert _metric(text, "trtforge:e2e_request_latency_seconds_count") == 3
            assert _metric(text, "trtforge:time_to_first_token_seconds_count") == 4  # the stream's too
            assert _metric(text, "trtforge:request_generation_tokens_sum") == sum(
                u["completion_tokens"] for u in usages
            )

            one.close()  # the client of the stream goes: the first worker aborts it

            def aborted() -> bool:
                scraped = _call(other, "GET", "/metrics")[1].decode()
                return _metric(scraped, "trtforge:request_success_total", finished_reason="abort") == 1

            wait_until(aborted, what="the stream's abort in the other worker's /metrics")
            text = _call(other, "GET", "/metrics")[1].decode()
            assert _metric(text, "trtforge:num_requests_running") == 0
            assert _metric(text, "trtforge:num_requests_waiting") == 0


def test_metrics_directories_of_supervisors_that_are_gone_are_removed(tmp_path: Path) -> None:
    """A supervisor killed with SIGKILL leaves its directories (metrics, stored responses) behind: the next one
    removes them, and never one whose supervisor still runs."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    temp = Path(tempfile.gettempdir())
    kinds = {"metrics": "PROMETHEUS_MULTIPROC_DIR", "responses": "TRTFORGE_PROXY_RESPONSES_DIR"}
    stale = [temp / f"trtforge-proxy-{kind}-{gone.pid}-test" for kind in kinds]
    alive = [temp / f"trtforge-proxy-{kind}-{os.getpid()}-test" for kind in kinds]
    for directory in (*stale, *alive):
        directory.mkdir()
        (directory / "counter_1.db").write_bytes(b"")
    try:
        with _proxy_workers(tmp_path) as (process, port):
            workers = _listeners(_children(process.pid), port)
            for kind, variable in kinds.items():
                [current] = {_environ(pid)[variable] for pid in workers}
                assert Path(current).name.startswith(f"trtforge-proxy-{kind}-{process.pid}-")
            assert not any(directory.exists() for directory in stale)
            assert all((directory / "counter_1.db").is_file() for directory in alive)
    finally:
        for directory in (*stale, *alive):
            shutil.rmtree(directory, ignore_errors=True)


# ---------------------------------------------------------------------- the Responses store across workers


def _client_port(raw: Any) -> int:
    """The local port of the connection an SDK call (`.with_raw_response`) went over."""
    stream = raw.http_response.extensions["network_stream"]
    return int(stream.get_extra_info("client_addr")[1])


def _sdk_on(worker: int, port: int, workers: list[int]) -> openai.OpenAI:
    """An SDK client whose one keep-alive connection is served by `worker` (new clients until one is)."""
    for _ in range(500):
        http_client = httpx.Client(limits=httpx.Limits(max_connections=1), timeout=300)
        client = openai.OpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key="key-a", max_retries=0, http_client=http_client
        )
        if _worker_of(_client_port(client.models.with_raw_response.list()), port, workers) == worker:
            return client
        client.close()
    raise AssertionError(f"500 clients never reached worker {worker} of {workers}")


def _on(raw: Any, worker: int, port: int, workers: list[int]) -> Any:
    """The parsed result of an SDK call, once sure `worker` served it."""
    assert _worker_of(_client_port(raw), port, workers) == worker
    return raw.parse()


@pytest.mark.triton
def test_a_response_stored_by_one_worker_is_read_and_continued_on_the_other(
    tiny_engine: Path, tmp_path: Path
) -> None:
    """2 workers, Triton serving the tiny model: a response created on one worker is read, listed, continued
    (`previous_response_id`) and deleted through the other; the shared store's directory (private, in the
    workers' environment only) is gone once the proxy stopped."""
    with running_triton(read_engine(tiny_engine), tmp_path / "triton") as triton:
        grpc_port = int(triton.grpc_url.rsplit(":", 1)[1])
        with _proxy_workers(tmp_path, engine=tiny_engine, grpc_port=grpc_port) as (process, port):
            workers = _listeners(_children(process.pid), port)
            [store_dir] = {Path(_environ(pid)["TRTFORGE_PROXY_RESPONSES_DIR"]) for pid in workers}
            assert store_dir.is_dir() and store_dir.stat().st_mode & 0o777 == 0o700
            assert "TRTFORGE_PROXY_RESPONSES_DIR" not in _environ(process.pid)
            first, second = workers
            one = _sdk_on(first, port, workers)
            model = one.models.list().data[0].id
            created = _on(
                one.responses.with_raw_response.create(model=model, input="Hello", temperature=0),
                first,
                port,
                workers,
            )
            assert created.status == "completed" and created.output_text

            other = _sdk_on(second, port, workers)
            read = _on(other.responses.with_raw_response.retrieve(created.id), second, port, workers)
            assert read.model_dump() == created.model_dump()
            items = _on(other.responses.input_items.with_raw_response.list(created.id), second, port, workers)
            assert [item.role for item in items.data] == ["user"]
            continued = _on(
                other.responses.with_raw_response.create(
                    model=model, input="Again", previous_response_id=created.id, temperature=0
                ),
                second,
                port,
                workers,
            )
            assert continued.status == "completed" and continued.previous_response_id == created.id
            assert continued.usage.input_tokens > created.usage.input_tokens  # the first turn came along
            again = _sdk_on(first, port, workers)
            read = _on(again.responses.with_raw_response.retrieve(continued.id), first, port, workers)
            assert read.output_text == continued.output_text
            _on(other.responses.with_raw_response.delete(created.id), second, port, workers)
            with pytest.raises(openai.NotFoundError):  # on the first worker: `again`'s connection is kept
                again.responses.retrieve(created.id)
            for client in (one, other, again):
                client.close()

            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=60) in (0, -signal.SIGTERM)
            assert not store_dir.exists()
