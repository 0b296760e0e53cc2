"""Binary caches against a real S3 server (SeaweedFS) and file:// caches: push, pull, substitution, trust.

"Machine A" builds with the stand-in `trtllm-bench` and pushes; "machine B" is another TRTFORGE_HOME and link
directory with no TensorRT-LLM at all (only `$TRTFORGE_TRTLLM_VERSION` says which engine version it wants).
Commands run as the user runs them: `python -m trtforge ...` in a subprocess.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import obstore
import pytest
from obstore.store import S3Store

from checkpoints import write_nvfp4_checkpoint
from seaweedfs import S3Server, create_bucket, seaweedfs
from trtforge.cache.objects import ObjectCache, s3_config
from trtforge.cache.transfer import pull_entry
from trtforge.errors import CacheIntegrityError
from trtforge.store.entries import EngineStore

STANDINS = Path(__file__).parent / "standins"
STANDIN_VERSION = "1.0.0"
ENGINE_BYTES = 8 * 1024 * 1024


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_nvfp4_checkpoint(tmp_path_factory.mktemp("ckpt") / "small-nvfp4", tiny=True)


@pytest.fixture(scope="module")
def shared_bucket(s3: S3Server) -> str:
    """One bucket for the module (each new bucket is a new SeaweedFS collection with volumes of its own)."""
    name = f"engines-{uuid.uuid4().hex[:12]}"
    create_bucket(s3, name)
    return name


@pytest.fixture
def bucket(s3: S3Server, shared_bucket: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh cache URL (its own prefix); the AWS variables point every client at SeaweedFS."""
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    return f"s3://{shared_bucket}/{uuid.uuid4().hex[:12]}/fleet"


@dataclass
class Machines:
    root: Path
    monkeypatch: pytest.MonkeyPatch

    def a(self) -> None:
        """The build machine: the stand-in TensorRT-LLM on PYTHONPATH, a target arch."""
        self._home("a")
        self.monkeypatch.setenv("PYTHONPATH", str(STANDINS))
        self.monkeypatch.delenv("TRTFORGE_TRTLLM_VERSION", raising=False)

    def b(self, name: str = "b") -> None:
        """A serving machine: an empty store and no TensorRT-LLM; it names the version it wants."""
        self._home(name)
        self.monkeypatch.delenv("PYTHONPATH", raising=False)
        self.monkeypatch.setenv("TRTFORGE_TRTLLM_VERSION", STANDIN_VERSION)

    def _home(self, name: str) -> None:
        self.monkeypatch.setenv("TRTFORGE_HOME", str(self.root / name / "home"))
        self.monkeypatch.setenv("TRTLLM_ENGINE_PATH", str(self.root / name / "links"))
        self.monkeypatch.setenv("TRTFORGE_STANDIN_PIDFILE", str(self.root / name / "builder.pids"))

    def builder_ran(self, name: str) -> bool:
        return (self.root / name / "builder.pids").exists()


@pytest.fixture
def machines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, checkpoint: Path) -> Machines:
    monkeypatch.setenv("TRTFORGE_GPU_ARCH", "sm100")
    monkeypatch.setenv("TRTFORGE_STANDIN_ENGINE_BYTES", str(ENGINE_BYTES))
    for variable in ("TRTFORGE_SUBSTITUTERS", "TRTFORGE_TRUSTED_KEYS", "TRTFORGE_SIGNING_KEY_FILE"):
        monkeypatch.delenv(variable, raising=False)
    catalogue = tmp_path / "engines.toml"
    catalogue.write_text(
        f'[engines.small]\nmodel = "{checkpoint}"\nquantization = "NVFP4"\nmax_seq_len = 2048\n'
        "max_num_tokens = 2048\n"
    )
    monkeypatch.setenv("TRTFORGE_CATALOG", str(catalogue))
    return Machines(tmp_path, monkeypatch)


def trtforge(*args: str, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "trtforge", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=dict(os.environ),
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if check and done.returncode != 0:
        raise AssertionError(f"trtforge {' '.join(args)} exited {done.returncode}:\n{done.stderr}")
    return done


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, done.stderr
    assert "Traceback" not in done.stderr
    return errors[0]


def generate_key(name: str, directory: Path) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    done = trtforge("key", "generate", name, cwd=directory)
    public = done.stdout.strip()
    assert public.startswith(f"{name}:")
    assert (directory / f"{name}.public").read_text().strip() == public
    assert (directory / f"{name}.secret").stat().st_mode & 0o777 == 0o600
    return public


def build_and_push(machines: Machines, url: str, key_dir: Path, key: str = "build-1") -> tuple[str, Path]:
    """On machine A: build `small` and push it signed with `--push-to`; returns (public key, store path)."""
    public = generate_key(key, key_dir)
    machines.a()
    done = trtforge(
        "build", "small", "--json", "--push-to", url, "--key-file", str(key_dir / f"{key}.secret")
    )
    result = json.loads(done.stdout)
    assert result["substituted_from"] is None and machines.builder_ran("a")
    assert "pushed to" in done.stderr
    return public, Path(result["path"])


def assert_store_empty() -> None:
    store = EngineStore()
    assert store.scan().entries == ()
    tmp = store.root / "tmp"
    assert not tmp.exists() or list(tmp.iterdir()) == []
    links = Path(os.environ["TRTLLM_ENGINE_PATH"])
    assert not links.exists() or list(links.iterdir()) == []


def raw_store(url: str) -> S3Store:
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    return S3Store(bucket, prefix=prefix, config=s3_config(), client_options={"allow_http": True})  # type: ignore[arg-type]


# --- the tests ---------------------------------------------------------------------------------------------


def test_build_on_a_machine_without_tensorrt_llm_substitutes_and_verifies(
    machines: Machines, bucket: str, tmp_path: Path
) -> None:
    public, built = build_and_push(machines, bucket, tmp_path / "keys")

    machines.b()
    machines.monkeypatch.setenv("TRTFORGE_SUBSTITUTERS", bucket)
    machines.monkeypatch.setenv("TRTFORGE_TRUSTED_KEYS", public)
    done = trtforge("build", "small")
    path = Path(done.stdout.strip().splitlines()[-1])
    assert path.parent == EngineStore().root and path.name == built.name
    assert f"pulled from {bucket}" in done.stderr
    assert not machines.builder_ran("b")
    assert (Path(os.environ["TRTLLM_ENGINE_PATH"]) / "small").resolve() == path
    assert (path / "trtforge.json").read_bytes() == (built / "trtforge.json").read_bytes()
    trtforge("verify", "small")

    # A second build is a plain store hit; --no-substitute without TensorRT-LLM says why it cannot build.
    assert json.loads(trtforge("build", "small", "--json").stdout)["cached"] is True
    machines.b("c")
    refused = one_line_error(trtforge("build", "small", "--no-substitute", check=False))
    assert "TensorRT-LLM is not installed" in refused
    assert_store_empty()


def test_pull_refuses_wrong_key_and_unsigned_unless_allowed(
    machines: Machines, bucket: str, tmp_path: Path
) -> None:
    _public, _built = build_and_push(machines, bucket, tmp_path / "keys")
    stranger = generate_key("someone-else", tmp_path / "other-keys")

    machines.b()
    machines.monkeypatch.setenv("TRTFORGE_TRUSTED_KEYS", stranger)
    error = one_line_error(trtforge("pull", "small", "--from", bucket, check=False))
    assert "not trusted" in error and "build-1" in error
    machines.monkeypatch.setenv("TRTFORGE_SUBSTITUTERS", bucket)
    error = one_line_error(trtforge("build", "small", check=False))
    assert "not trusted" in error
    assert not machines.builder_ran("b")
    assert_store_empty()

    # The same entry pushed unsigned to another prefix: refused, unless the user says --allow-unsigned.
    machines.a()
    unsigned = bucket.replace("/fleet", "/unsigned")
    trtforge("push", "small", "--to", unsigned)
    machines.b()
    error = one_line_error(trtforge("pull", "small", "--from", unsigned, check=False))
    assert "unsigned" in error
    assert_store_empty()
    pulled = json.loads(trtforge("pull", "small", "--from", unsigned, "--allow-unsigned", "--json").stdout)
    assert pulled["signed_by"] is None and pulled["transferred_bytes"] == pulled["total_bytes"]
    trtforge("verify", "small")


def test_one_changed_byte_in_an_uploaded_object_publishes_nothing(
    machines: Machines, bucket: str, tmp_path: Path
) -> None:
    public, built = build_and_push(machines, bucket, tmp_path / "keys")
    digest = built.name.split("-")[0]
    store = raw_store(bucket)
    key = f"{digest}/files/rank0.engine"
    data = bytearray(bytes(obstore.get(store, key).bytes()))
    data[len(data) // 2] ^= 0x01
    obstore.put(store, key, bytes(data))

    machines.b()
    machines.monkeypatch.setenv("TRTFORGE_TRUSTED_KEYS", public)
    error = one_line_error(trtforge("pull", "small", "--from", bucket, check=False))
    assert "rank0.engine" in error and "sha256" in error
    assert_store_empty()

    # Truncated: the size no longer matches the signed manifest.
    obstore.put(store, key, bytes(data[: len(data) // 3]))
    error = one_line_error(trtforge("pull", "small", "--from", bucket, check=False))
    assert "truncated" in error
    assert_store_empty()

    # A changed manifest no longer matches its signature.
    manifest = json.loads(bytes(obstore.get(store, f"{digest}/trtforge.json").bytes()))
    manifest["files"]["rank0.engine"]["size"] = len(data) // 3
    obstore.put(store, f"{digest}/trtforge.json", json.dumps(manifest).encode())
    error = one_line_error(trtforge("pull", "small", "--from", bucket, check=False))
    assert "does not match the manifest" in error
    assert_store_empty()


def test_a_manifest_under_another_hash_is_refused(machines: Machines, bucket: str, tmp_path: Path) -> None:
    _public, built = build_and_push(machines, bucket, tmp_path / "keys")
    digest = built.name.split("-")[0]
    other = "0" * len(digest)
    store = raw_store(bucket)
    obstore.put(store, f"{other}/trtforge.json", bytes(obstore.get(store, f"{digest}/trtforge.json").bytes()))
    machines.b()
    with pytest.raises(CacheIntegrityError, match="for hash"):
        pull_entry("small", other, bucket, trusted=[], allow_unsigned=True)
    assert_store_empty()


def test_an_interrupted_pull_resumes_without_fetching_finished_bytes(
    machines: Machines, bucket: str, tmp_path: Path
) -> None:
    public, built = build_and_push(machines, bucket, tmp_path / "keys")
    digest = built.name.split("-")[0]
    manifest = json.loads((built / "trtforge.json").read_text())
    total = sum(record["size"] for record in manifest["files"].values())

    # What a pull killed half-way through rank0.engine leaves (files are fetched in sorted order).
    machines.b()
    machines.monkeypatch.setenv("TRTFORGE_TRUSTED_KEYS", public)
    staging = EngineStore().resumable_incomplete(digest, "pull")
    finished = [name for name in sorted(manifest["files"]) if name < "rank0.engine"]
    for name in finished:
        (staging / name).parent.mkdir(parents=True, exist_ok=True)
        (staging / name).write_bytes((built / name).read_bytes())
    half = (built / "rank0.engine").read_bytes()[: ENGINE_BYTES // 2]
    (staging / "rank0.engine").write_bytes(half)
    already = sum(manifest["files"][name]["size"] for name in finished) + len(half)

    pulled = json.loads(trtforge("pull", "small", "--from", bucket, "--json").stdout)
    assert pulled["transferred_bytes"] == total - already
    assert pulled["path"] == str(EngineStore().root / built.name)
    assert not staging.exists()
    trtforge("verify", "small")


class StallingProxy:
    """A TCP proxy to the S3 server that forwards only `budget` response bytes, then holds every connection.

    It makes a pull stop half-way through a file for certain (a real network stall, not a mock), so the test can
    kill the puller there.
    """

    def __init__(self, upstream: str, budget: int) -> None:
        self.upstream = ("127.0.0.1", int(upstream.rsplit(":", 1)[1]))
        self.budget = budget
        self.exhausted = threading.Event()
        self.closed = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            self._sockets += [client, server]
            threading.Thread(target=self._pipe, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, True), daemon=True).start()

    def _pipe(self, source: socket.socket, dest: socket.socket, limited: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(1 << 16):
                if limited:
                    with self._lock:
                        allowed = min(len(data), self.budget)
                        self.budget -= allowed
                    if allowed < len(data):
                        dest.sendall(data[:allowed])
                        self.exhausted.set()
                        self.closed.wait()  # hold the connection open: the client sees a stalled transfer
                        return
                dest.sendall(data)

    def close(self) -> None:
        self.closed.set()
        self.listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()


def test_a_pull_killed_mid_file_resumes_where_it_stopped(
    machines: Machines, bucket: str, tmp_path: Path, s3: S3Server
) -> None:
    engine_bytes = 40 * 1024 * 1024  # several download chunks, so the stall lands inside rank0.engine
    machines.monkeypatch.setenv("TRTFORGE_STANDIN_ENGINE_BYTES", str(engine_bytes))
    public, built = build_and_push(machines, bucket, tmp_path / "keys")
    digest = built.name.split("-")[0]
    total = sum(p.stat().st_size for p in built.iterdir() if p.name != "trtforge.json")
    machines.b()
    machines.monkeypatch.setenv("TRTFORGE_TRUSTED_KEYS", public)

    proxy = StallingProxy(s3.endpoint, budget=total // 2)
    try:
        env = {**os.environ, "AWS_ENDPOINT_URL": proxy.endpoint}
        argv = [sys.executable, "-m", "trtforge", "pull", "small", "--from", bucket, "--json"]
        puller = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        big_file = EngineStore().root / "tmp" / f"{digest}.pull.incomplete" / "rank0.engine"

        def stalled_inside_the_big_file() -> bool:
            # The proxy has stopped forwarding, and the puller (which reads ahead and writes on a thread) has
            # written part of rank0.engine: only then does the kill interrupt the pull inside that file.
            return proxy.exhausted.is_set() and big_file.exists() and big_file.stat().st_size > 0

        try:
            while not stalled_inside_the_big_file():
                assert puller.poll() is None, "the pull ended before the proxy stalled it"
                proxy.exhausted.wait(timeout=0.1)
        finally:
            puller.kill()
            puller.wait()
    finally:
        proxy.close()

    staging = EngineStore().resumable_incomplete(digest, "pull")
    on_disk = sum(p.stat().st_size for p in staging.rglob("*") if p.is_file())
    assert 0 < on_disk < total
    assert 0 < (staging / "rank0.engine").stat().st_size < engine_bytes  # stopped inside the big file
    assert EngineStore().find(digest) is None

    pulled = json.loads(trtforge("pull", "small", "--from", bucket, "--json").stdout)
    assert pulled["transferred_bytes"] == total - on_disk
    assert not staging.exists()
    trtforge("verify", "small")


def test_a_corrupt_partial_download_is_discarded_not_published(
    machines: Machines, bucket: str, tmp_path: Path
) -> None:
    public, built = build_and_push(machines, bucket, tmp_path / "keys")
    digest = built.name.split("-")[0]
    machines.b()
    machines.monkeypatch.setenv("TRTFORGE_TRUSTED_KEYS", public)
    staging = EngineStore().resumable_incomplete(digest, "pull")
    (staging / "rank0.engine").write_bytes(b"\xff" * 1000)
    error = one_line_error(trtforge("pull", "small", "--from", bucket, check=False))
    assert "rank0.engine" in error
    assert_store_empty()
    pulled = json.loads(trtforge("pull", "small", "--from", bucket, "--json").stdout)
    assert pulled["transferred_bytes"] == pulled["total_bytes"]


def test_two_concurrent_pulls_download_once(machines: Machines, bucket: str, tmp_path: Path) -> None:
    public, built = build_and_push(machines, bucket, tmp_path / "keys")
    machines.b()
    machines.monkeypatch.setenv("TRTFORGE_TRUSTED_KEYS", public)
    argv = [sys.executable, "-m", "trtforge", "pull", "small", "--from", bucket, "--json"]
    processes = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)
    ]
    results = []
    for process in processes:
        stdout, stderr = process.communicate()
        assert process.returncode == 0, stderr
        results.append(json.loads(stdout))
    assert {r["path"] for r in results} == {str(EngineStore().root / built.name)}
    total = results[0]["total_bytes"]
    assert sorted(r["transferred_bytes"] for r in results) == [0, total]
    assert sorted(r["already_present"] for r in results) == [False, True]
    trtforge("verify", "small")


def test_file_caches_push_pull_and_substitute(machines: Machines, tmp_path: Path) -> None:
    url = f"file://{tmp_path / 'shared' / 'engines'}"
    public = generate_key("nfs-1", tmp_path / "keys")
    machines.a()
    built = Path(trtforge("build", "small").stdout.strip().splitlines()[-1])
    pushed = json.loads(
        trtforge(
            "push", "small", "--to", url, "--key-file", str(tmp_path / "keys" / "nfs-1.secret"), "--json"
        ).stdout
    )
    assert pushed["signed_by"] == "nfs-1" and pushed["transferred_bytes"] == pushed["total_bytes"]
    again = json.loads(trtforge("push", str(built), "--to", url, "--json").stdout)
    assert again["already_present"] is True and again["transferred_bytes"] == 0

    machines.b()
    (tmp_path / "engines.toml").write_text(
        (tmp_path / "engines.toml").read_text()
        + f'\n[cache]\nsubstituters = ["{url}"]\ntrusted_public_keys = ["{public}"]\n'
    )
    result = json.loads(trtforge("build", "small", "--json").stdout)
    assert result["substituted_from"] == url and not machines.builder_ran("b")
    trtforge("verify", "small")

    cache = ObjectCache.open(url)
    assert (
        cache.read_small(f"{built.name.split('-')[0]}/trtforge.json")
        == (built / "trtforge.json").read_bytes()
    )
