"""The `trtllm-bench build` command line and environment (the interpreter and its version: `trtforge.trtllm`)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from trtforge.catalog import CatalogEntry
from trtforge.errors import UsageError

Launcher = Literal["auto", "mpirun", "none"]
LAUNCHERS: tuple[str, ...] = ("auto", "mpirun", "none")
BENCH_MODULE = "tensorrt_llm.commands.bench"
MPIRUN_PREFIX = ("mpirun", "-np", "1", "--allow-run-as-root")

# Remedies for the shutdown hang: TP 1 stays in-process (no MPI pool to join), and Open MPI talks
# over loopback only, so no probing of other interfaces can block.
SINGLE_PROCESS_ENV = {"TLLM_WORKER_USE_SINGLE_PROCESS": "1"}
LOOPBACK_MPI_ENV = {"OMPI_MCA_btl_tcp_if_include": "lo", "OMPI_MCA_oob_tcp_if_include": "lo"}
# The LLM API's engine build cache (`TLLM_LLMAPI_BUILD_CACHE=1`, `TLLM_LLMAPI_BUILD_CACHE_ROOT`, TensorRT-LLM
# `llmapi/build_cache.py`): with it on, the engine is built into the cache instead of the workspace's
# `tmp*-llm-workspace/tmp.engine`, the source the watchdog compares the saved engine against, and a cached engine
# may be another build's. trtforge's store is the cache: these never reach the builder from the caller's shell.
CLEARED_ENV_PREFIXES = ("TLLM_LLMAPI_BUILD_CACHE",)


@dataclass(frozen=True)
class BuilderCommand:
    """One builder invocation: argv (never a shell string), environment, and where the engine lands."""

    argv: tuple[str, ...]
    env: Mapping[str, str]
    workspace: Path
    engine_dir: Path  # <workspace>/<model>/tp_{tp}_pp_{pp}


def resolve_launcher(launcher: str) -> tuple[str, ...]:
    """The argv prefix for the launcher: mpirun (`auto` picks it when it is on PATH) or nothing."""
    if launcher not in LAUNCHERS:
        raise UsageError(f"launcher must be one of {', '.join(LAUNCHERS)}, not {launcher!r}")
    if launcher == "none":
        return ()
    mpirun = shutil.which("mpirun")
    if mpirun is None:
        if launcher == "mpirun":
            raise UsageError("--launcher mpirun: mpirun is not on PATH")
        return ()
    return (mpirun, *MPIRUN_PREFIX[1:])


def builder_env(entry: CatalogEntry, base: Mapping[str, str] | None = None) -> dict[str, str]:
    source = os.environ if base is None else base
    env = {key: value for key, value in source.items() if not key.startswith(CLEARED_ENV_PREFIXES)}
    env["PYTHONUNBUFFERED"] = "1"  # the watchdog reads the log as it is written
    env.update(LOOPBACK_MPI_ENV)
    if entry.world_size == 1:
        env.update(SINGLE_PROCESS_ENV)
    return env


def build_command(
    entry: CatalogEntry,
    *,
    python: str,
    launcher: str,
    workspace: Path,
    model_path: Path | None,
    revision: str | None,
    base_env: Mapping[str, str] | None = None,
) -> BuilderCommand:
    """The argv for `trtllm-bench build` exactly as TensorRT-LLM's command line spells it.

    Global options come before `build`. A local checkpoint is passed as `--model <entry name> --model_path <dir>`
    (an absolute `--model` would drop the workspace from the engine path).
    """
    model_arg = entry.name if model_path is not None else entry.model
    argv: list[str] = [*resolve_launcher(launcher), python, "-m", BENCH_MODULE, "--model", model_arg]
    if model_path is not None:
        argv += ["--model_path", str(model_path)]
    argv += ["--workspace", str(workspace)]
    if revision and model_path is None:
        argv += ["--revision", revision]
    argv += ["build"]
    if entry.quantization:
        argv += ["--quantization", entry.quantization]
    argv += [
        "--tp_size", str(entry.tp_size),
        "--pp_size", str(entry.pp_size),
        "--max_batch_size", str(entry.max_batch_size),
        "--max_num_tokens", str(entry.max_num_tokens),
        "--max_seq_len", str(entry.max_seq_len),
    ]  # fmt: skip
    if entry.trust_remote_code:
        argv += ["--trust_remote_code", "True"]
    for key, value in sorted(entry.builder_options.items()):
        argv += [f"--{key}", _option_value(value)]
    engine_dir = workspace / model_arg / f"tp_{entry.tp_size}_pp_{entry.pp_size}"
    return BuilderCommand(tuple(argv), builder_env(entry, base_env), workspace, engine_dir)


def _option_value(value: str | int | float | bool) -> str:
    if isinstance(value, bool):
        return "True" if value else "False"
    return str(value)
