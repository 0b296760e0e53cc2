"""`trtforge up NAME… --dry-run [--json]`: the serving plan, printed, with nothing built, written or started;
and the plan's refusals, one `error:` line each with the same exit status with or without `--dry-run`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import copy_engine_with, free_port, link_engine
from triton_helpers import write_engine_dir
from trtforge.engine import read_engine
from trtforge.proxy.parsers import default_parsers

STANDINS = Path(__file__).parent / "standins"
ONE_ENGINE_MODELS = {"tensorrt_llm", "preprocessing", "postprocessing", "ensemble", "tensorrt_llm_bls"}


def _up(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "trtforge", "up", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env)


def _ports() -> tuple[dict[str, int], list[str]]:
    ports = {"http": free_port(), "grpc": free_port(), "metrics": free_port(), "proxy": free_port()}
    args = [f"--triton-{kind}-port={ports[kind]}" for kind in ("http", "grpc", "metrics")]
    return ports, [*args, f"--port={ports['proxy']}"]


@pytest.fixture
def recording_triton(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """A Triton install (`$TRITON_HOME`) whose tritonserver only records that it was run: if the marker never
    appears, no tritonserver was ever started (however briefly), since every start goes through this binary."""
    home = tmp_path / "triton-home"
    (home / "backends" / "python").mkdir(parents=True)
    (home / "bin").mkdir()
    marker = tmp_path / "tritonserver-ran"
    binary = home / "bin" / "tritonserver"
    binary.write_text(f"#!/bin/sh\necho \"$@\" >> '{marker}'\n")
    binary.chmod(0o755)
    return {**os.environ, "TRITON_HOME": str(home)}, marker


def _assert_free(ports: dict[str, int]) -> None:
    for port in ports.values():
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # raises when something still listens there


def _assert_nothing_started(home: Path, marker: Path, ports: dict[str, int]) -> None:
    assert not marker.exists(), "a dry run must never start tritonserver"
    assert not (home / "tmp" / "repositories").exists(), "a dry run writes no repository"
    assert not (home / "store").exists(), "a dry run builds nothing"
    _assert_free(ports)


def test_dry_run_json_names_backend_store_path_ports_command_and_models(
    tiny_engine: Path, isolated_home: Path, recording_triton: tuple[dict[str, str], Path]
) -> None:
    env, marker = recording_triton
    link_engine("tiny", tiny_engine)
    ports, args = _ports()
    result = _up("tiny", "--dry-run", "--json", *args, env=env)
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    [engine] = plan["engines"]
    assert engine["name"] == "tiny" and engine["backend"] == "reference"
    assert engine["path"] == str(tiny_engine.resolve())
    assert engine["triton_model"] == "tensorrt_llm" and engine["world_size"] == 1
    # No parser options: the defaults of the engine's architecture (tiny is Qwen3-shaped).
    expected = default_parsers(read_engine(tiny_engine).architecture)
    assert (engine["reasoning_parser"], engine["tool_parser"]) == expected != ("none", "none")
    assert set(plan["repository"]["models"]) == ONE_ENGINE_MODELS
    repository = plan["repository"]["path"]
    assert repository.startswith(str(isolated_home / "tmp" / "repositories"))
    argv = plan["triton"]["argv"]
    assert argv[0] == str(Path(env["TRITON_HOME"]) / "bin" / "tritonserver")
    assert f"--model-repository={repository}" in argv
    for kind in ("http", "grpc", "metrics"):
        assert f"--{kind}-port={ports[kind]}" in argv and plan["triton"]["ports"][kind] == ports[kind]
    assert "--exit-timeout-secs=0" in argv  # behind the proxy, which ends every generation first
    assert plan["proxy"]["port"] == ports["proxy"] and plan["proxy"]["host"] == "127.0.0.1"
    assert plan["proxy"]["api_key_required"] is False
    assert plan["warnings"] == []
    _assert_nothing_started(isolated_home, marker, ports)


def test_dry_run_of_two_engines_plans_one_triton_model_each(
    tiny_engine: Path, isolated_home: Path, tmp_path: Path, recording_triton: tuple[dict[str, str], Path]
) -> None:
    env, marker = recording_triton
    link_engine("tiny", tiny_engine)
    link_engine("other", copy_engine_with(tiny_engine, tmp_path / "other", max_seq_len=512))
    ports, args = _ports()
    result = _up("tiny", "other", "--dry-run", "--json", *args, "--option", "max_queue_size=7", env=env)
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    engines = {engine["name"]: engine for engine in plan["engines"]}
    assert list(engines) == ["tiny", "other"]
    assert {e["backend"] for e in engines.values()} == {"reference"}
    assert engines["other"]["path"] == str((tmp_path / "other").resolve())
    assert engines["other"]["context_length"] == 512
    assert engines["tiny"]["context_length"] > 512
    assert {name: e["triton_model"] for name, e in engines.items()} == {
        "tiny": "tensorrt_llm-tiny",
        "other": "tensorrt_llm-other",
    }
    assert all(e["options"] == {"max_queue_size": 7} for e in engines.values())
    assert sorted(plan["repository"]["models"]) == ["tensorrt_llm-other", "tensorrt_llm-tiny"]
    assert plan["triton"]["processes"] == 1
    assert f"--grpc-port={ports['grpc']}" in plan["triton"]["argv"]
    _assert_nothing_started(isolated_home, marker, ports)


def test_dry_run_without_json_prints_the_plan_for_a_reader(
    tiny_engine: Path, isolated_home: Path, recording_triton: tuple[dict[str, str], Path]
) -> None:
    env, marker = recording_triton
    link_engine("tiny", tiny_engine)
    ports, args = _ports()
    result = _up("tiny", "--dry-run", *args, env=env)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "engine tiny: reference backend" in text
    assert f"store path: {tiny_engine.resolve()}" in text
    assert f"tritonserver: {Path(env['TRITON_HOME']) / 'bin' / 'tritonserver'} --model-repository=" in text
    assert f"proxy: http://127.0.0.1:{ports['proxy']}/v1" in text
    assert "ensemble" in text and "tensorrt_llm_bls" in text
    _assert_nothing_started(isolated_home, marker, ports)


@pytest.mark.parametrize("tp_size", [1, 2])
def test_dry_run_of_a_pytorch_entry_plans_the_llm_api_model_in_one_tritonserver(
    isolated_home: Path, tmp_path: Path, recording_triton: tuple[dict[str, str], Path], tp_size: int
) -> None:
    env, marker = recording_triton
    entry = write_engine_dir(tmp_path / "entry", backend="pytorch", tp_size=tp_size)
    link_engine("qwen", entry)
    # TensorRT-LLM 1.3 (the stand-in) and two Blackwell GPUs: the gate passes the NVFP4 entry.
    env["PYTHONPATH"] = os.pathsep.join([str(STANDINS / "trtllm13"), str(STANDINS / "nvml")])
    env["TRTFORGE_STANDIN_GPUS"] = "NVIDIA B200:10.0:183,NVIDIA B200:10.0:183"
    ports, args = _ports()
    result = _up("qwen", "--dry-run", "--json", *args, env=env)
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    [engine] = plan["engines"]
    assert (engine["backend"], engine["world_size"], engine["triton_model"]) == (
        "pytorch",
        tp_size,
        "tensorrt_llm",
    )
    assert engine["path"] == str(entry.resolve())
    assert set(plan["repository"]["models"]) == ONE_ENGINE_MODELS
    # The LLM API starts its own worker per rank: one tritonserver, never mpirun.
    assert plan["triton"]["processes"] == 1
    argv = plan["triton"]["argv"]
    assert argv[0] == str(Path(env["TRITON_HOME"]) / "bin" / "tritonserver")
    assert not any("mpirun" in part for part in argv)
    assert plan["warnings"] == []
    text = _up("qwen", "--dry-run", *args, env=env).stdout
    assert "engine qwen: pytorch backend" in text
    _assert_nothing_started(isolated_home, marker, ports)


def test_dry_run_of_an_engine_not_built_yet_is_one_line_and_builds_nothing(isolated_home: Path) -> None:
    _, args = _ports()
    result = _up("tiny", "--dry-run", *args)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: engine 'tiny' is not built yet and --dry-run builds nothing: `trtforge build tiny` builds it "
        "(`trtforge up tiny` builds and serves it)"
    ]
    assert not (isolated_home / "store").exists()


def _incompatible_engine(root: Path) -> Path:
    """A TensorRT engine built for sm100 with TensorRT-LLM 1.0.0 (the stand-ins' version)."""
    path = write_engine_dir(root / "engine", backend="tensorrt", version="1.0.0")
    manifest = {
        "name": "qwen",
        "hash": "0" * 32,
        "backend": "tensorrt",
        "builder_version": "1.0.0",
        "inputs": {"gpu_arch": "sm100", "builder_version": "1.0.0"},
        "files": {},
        "created_at": "2026-01-01T00:00:00Z",
    }
    (path / "trtforge.json").write_text(json.dumps(manifest))
    return path


WIDE = '[engines.wide]\nmodel = "nvidia/Qwen3-32B-NVFP4"\nquantization = "NVFP4"\ntp_size = 2\n'


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "up"])
@pytest.mark.parametrize(
    ("case", "status", "message"),
    [
        ("duplicate", 2, "error: engine 'tiny' is named more than once; serve each engine once"),
        (
            "multi-rank",
            2,
            "error: engine 'wide' has 2 ranks and cannot share a Triton with other engines; serve it alone",
        ),
        ("parser", 2, "error: unknown reasoning parser `bogus`; choose one of: none, qwen3"),
        ("incompatible", 3, "but GPU 0 NVIDIA H100 80GB HBM3 is sm90"),
        ("unknown", 1, "error: no engine named 'nothere'"),
    ],
)
def test_each_refusal_is_one_error_line_with_its_status(
    isolated_home: Path, tmp_path: Path, case: str, status: int, message: str, dry_run: bool
) -> None:
    env = dict(os.environ)
    names = {
        "duplicate": ["tiny", "tiny"],
        "multi-rank": ["tiny", "wide"],
        "parser": ["tiny", "--option", "reasoning_parser=bogus"],
        "unknown": ["nothere"],
    }.get(case, [])
    if case == "multi-rank":
        (isolated_home.parent / "engines.toml").write_text(WIDE, encoding="utf-8")
    if case == "incompatible":
        names = [str(_incompatible_engine(tmp_path))]
        # The stand-in TensorRT-LLM (version 1.0.0) and an NVML reporting one H100.
        env["PYTHONPATH"] = os.pathsep.join([str(STANDINS), str(STANDINS / "nvml")])
        env["TRTFORGE_STANDIN_GPUS"] = "NVIDIA H100 80GB HBM3:9.0:80"
    _, ports = _ports()
    result = _up(*names, *ports, *(["--dry-run"] if dry_run else []), env=env)
    assert result.returncode == status, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert not (isolated_home / "store").exists(), "nothing may be built when the command cannot serve"
    assert not (isolated_home / "tmp" / "repositories").exists(), "nothing written, nothing started"


def test_dry_run_says_the_workers_resolved_from_auto_or_given(
    tiny_engine: Path, isolated_home: Path, recording_triton: tuple[dict[str, str], Path]
) -> None:
    """`--workers auto` (the default) is resolved before the plan: the number and the cores it came from."""
    from trtforge.proxy.workers import auto_workers, usable_cores

    env, marker = recording_triton
    link_engine("tiny", tiny_engine)
    ports, args = _ports()
    default = json.loads(_up("tiny", "--dry-run", "--json", *args, env=env).stdout)["proxy"]
    cores = usable_cores()
    assert (default["workers"], default["workers_auto_cores"]) == (auto_workers(cores), cores)
    given = json.loads(_up("tiny", "--dry-run", "--json", "--workers", "3", *args, env=env).stdout)["proxy"]
    assert (given["workers"], given["workers_auto_cores"]) == (3, None)
    text = _up("tiny", "--dry-run", "--workers=auto", *args, env=env).stdout
    described = f"{auto_workers(cores)} worker{'s' * (auto_workers(cores) > 1)}"
    assert f"/v1 ({described} (auto: {cores} usable core{'s' * (cores > 1)}))" in text
    refused = _up("tiny", "--dry-run", "--workers", "many", *args, env=env)
    assert refused.returncode == 2
    assert (
        refused.stderr.strip() == "error: --workers takes `auto` or a whole number of at least 1, not 'many'"
    )
    _assert_nothing_started(isolated_home, marker, ports)
