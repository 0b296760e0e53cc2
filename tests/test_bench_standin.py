"""The stand-in `trtllm-bench build` (tests/standins/tensorrt_llm) refuses and decides what the real one does
(`tensorrt_llm/commands/bench.py`, `tensorrt_llm/bench/build/build.py`): what trtforge's builds are tested against."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from checkpoints import write_nvfp4_checkpoint

STANDINS = Path(__file__).parent / "standins"
SIZES = ["--max_batch_size", "4", "--max_num_tokens", "256", "--max_seq_len", "512"]


def _bench(
    workspace: Path, *args: str, model_path: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    argv = [
        sys.executable,
        "-m",
        "tensorrt_llm.commands.bench",
        "--model",
        "m",
        "--workspace",
        str(workspace),
    ]
    if model_path is not None:
        argv += ["--model_path", str(model_path)]
    full_env = {**os.environ, **(env or {}), "PYTHONPATH": str(STANDINS)}
    full_env["TRTFORGE_STANDIN_ENGINE_BYTES"] = str(256 * 1024)
    return subprocess.run([*argv, *args], capture_output=True, text=True, env=full_env, timeout=120)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--max_batch_size", "0", "--max_num_tokens", "8", "--max_seq_len", "8"],
            "0 is not in the range x>=1",
        ),
        (
            ["--max_batch_size", "4", "--max_num_tokens", "-1", "--max_seq_len", "8"],
            "-1 is not in the range x>=1",
        ),
        (
            ["--max_batch_size", "4", "--max_num_tokens", "8", "--max_seq_len", "0"],
            "0 is not in the range x>=1",
        ),
        (
            ["--max_batch_size", "4", "--max_seq_len", "8"],
            '"Build Engine with IFB Scheduler Limits" option group',
        ),
        (
            ["--target_input_len", "4", "--max_seq_len", "8"],
            "Missing required options:\n  --target_output_len",
        ),
        (
            ["--dataset", "/no/such/dataset.jsonl", "--max_seq_len", "8"],
            "Path '/no/such/dataset.jsonl' does not",
        ),
        (["--quantization", "NVFP8", *SIZES], "'NVFP8' is not one of"),
    ],
)
def test_click_refuses_bad_options_with_exit_status_2(tmp_path: Path, args: list[str], message: str) -> None:
    done = _bench(tmp_path, "build", *args)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert not list(tmp_path.iterdir())  # refused before anything was written


def test_log_level_has_the_real_choices(tmp_path: Path) -> None:
    done = _bench(tmp_path, "--log_level", "chatty", "build", *SIZES)
    assert done.returncode == 2 and "'internal_error', 'error', 'warning', 'info', 'verbose'" in done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            [*SIZES, "--target_input_len", "4", "--target_output_len", "4"],
            "Multiple engine build options detected",
        ),
        (
            [
                "--max_batch_size",
                "4",
                "--max_num_tokens",
                "8",
                "--tp_size",
                "4",
                "--pp_size",
                "4",
                "--max_seq_len",
                "8",
            ],
            "Parallelism mapping of TP4-PP4 is currently unsupported",
        ),
        (["--max_batch_size", "4", "--max_num_tokens", "8"], "Unspecified max_seq_len for engine build"),
    ],
)
def test_build_mode_settings_are_value_errors(tmp_path: Path, args: list[str], message: str) -> None:
    # apply_build_mode_settings raises ValueError: a traceback and exit status 1, not a usage error.
    done = _bench(tmp_path, "build", *args)
    assert done.returncode == 1 and f"ValueError: {message}" in done.stderr, done.stderr


@pytest.mark.parametrize(
    ("declared", "explicit", "kv", "fp8_fmha", "gemm"),
    [
        ("FP8", None, "FP8", False, "auto"),  # the checkpoint's own declaration
        (None, None, None, False, "auto"),
        (None, "NVFP4", "FP8", True, "nvfp4"),  # forced by an explicit NVFP4, whatever the checkpoint says
        ("FP8", "NVFP4", "FP8", True, "nvfp4"),
    ],
)
def test_fp8_kv_cache_only_for_an_explicit_nvfp4_or_fp8(
    tmp_path: Path, declared: str | None, explicit: str | None, kv: str | None, fp8_fmha: bool, gemm: str
) -> None:
    checkpoint = write_nvfp4_checkpoint(tmp_path / "ckpt", tiny=True, kv_cache_quant_algo=declared)
    quant = ["--quantization", explicit] if explicit else []
    done = _bench(tmp_path / "ws", "build", *quant, *SIZES, model_path=checkpoint)
    assert done.returncode == 0, done.stderr
    config = json.loads((tmp_path / "ws" / "m" / "tp_1_pp_1" / "config.json").read_text())
    assert config["pretrained_config"]["quantization"]["quant_algo"] == "NVFP4"
    assert config["pretrained_config"]["quantization"]["kv_cache_quant_algo"] == kv
    plugins = config["build_config"]["plugin_config"]
    assert (plugins["gemm_plugin"], plugins["use_fp8_context_fmha"]) == (gemm, fp8_fmha)


def test_no_build_option_takes_buildconfigs_defaults(tmp_path: Path) -> None:
    checkpoint = write_nvfp4_checkpoint(tmp_path / "ckpt", tiny=True)
    done = _bench(tmp_path / "ws", "build", "--max_seq_len", "512", model_path=checkpoint)
    assert done.returncode == 0, done.stderr
    assert "[W] No engine build option is selected" in done.stdout
    build = json.loads((tmp_path / "ws" / "m" / "tp_1_pp_1" / "config.json").read_text())["build_config"]
    assert (build["max_batch_size"], build["max_num_tokens"]) == (2048, 8192)


def test_the_llm_api_build_cache_takes_the_engine_out_of_the_workspace(tmp_path: Path) -> None:
    checkpoint = write_nvfp4_checkpoint(tmp_path / "ckpt", tiny=True)
    cache = tmp_path / "cache"
    env = {"TLLM_LLMAPI_BUILD_CACHE": "1", "TLLM_LLMAPI_BUILD_CACHE_ROOT": str(cache)}
    done = _bench(tmp_path / "ws", "build", *SIZES, model_path=checkpoint, env=env)
    assert done.returncode == 0, done.stderr
    assert not list((tmp_path / "ws").glob("tmp*-llm-workspace"))
    assert (
        list(cache.rglob("rank0.engine")) and (tmp_path / "ws" / "m" / "tp_1_pp_1" / "rank0.engine").is_file()
    )


def test_the_13_stand_in_has_no_build_command(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(STANDINS / "trtllm13")}
    done = subprocess.run(
        [sys.executable, "-m", "tensorrt_llm.commands.bench", "--model", "m", "build", *SIZES],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 2 and "Error: No such command 'build'." in done.stderr
