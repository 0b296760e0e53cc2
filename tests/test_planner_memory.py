"""The memory planner on a Qwen3-32B-NVFP4-shaped checkpoint, and `trtforge plan`."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from checkpoints import write_nvfp4_checkpoint
from trtforge.builder.llmapi_options import cuda_graph_batch_sizes
from trtforge.catalog import CatalogEntry
from trtforge.checkpoint.locate import inspect_checkpoint
from trtforge.checkpoint.model import CheckpointInfo
from trtforge.cli import app
from trtforge.errors import PlanError, UsageError
from trtforge.gpu import KNOWN_GPUS
from trtforge.planner import (
    CUDA_GRAPH_BYTES,
    RUNTIME_RESERVE_BYTES,
    PlanSettings,
    engine_parts,
    kv_bytes_per_token,
    plan_memory,
    require_fit,
)

GB = 1000**3
JSON_KEYS = (
    "params_total",
    "weights_bytes",
    "engine_bytes_estimate",
    "kv_bytes_per_token",
    "kv_tokens_capacity",
    "max_concurrent_sequences",
    "fits",
    "recommendation",
)


@pytest.fixture(scope="module")
def qwen3_32b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_nvfp4_checkpoint(tmp_path_factory.mktemp("ckpt") / "Qwen3-32B-NVFP4")


@pytest.fixture(scope="module")
def info(qwen3_32b: Path) -> CheckpointInfo:
    return inspect_checkpoint(qwen3_32b)


def _plan(info: CheckpointInfo, gpu: str | None, **settings: object):  # type: ignore[no-untyped-def]
    memory = KNOWN_GPUS[gpu].memory_bytes if gpu else None
    return plan_memory(info, PlanSettings(**settings), gpu_memory_bytes=memory, gpu_name=gpu)  # type: ignore[arg-type]


def test_done_criteria_engine_size_and_fp8_kv_bytes(info: CheckpointInfo) -> None:
    plan = _plan(info, None)
    assert 19 * GB <= plan.engine_bytes_estimate <= 22 * GB
    assert plan.kv_bytes_per_token == 131072  # 2 × 64 layers × 8 KV heads × 128 × 1 byte (FP8)
    assert plan.kv_cache_dtype == "FP8"
    # trtllm-bench's params × 0.5 B is ~20 % below ours: it forgets block scales and BF16 embedding/lm_head.
    assert plan.trtllm_bench["engine_bytes_estimate"] == info.params_total // 2
    assert plan.engine_bytes_estimate > 1.2 * plan.trtllm_bench["engine_bytes_estimate"]


def test_engine_parts_add_up_and_name_each_part(info: CheckpointInfo) -> None:
    parts = {p.role: p for p in engine_parts(info, 1)}
    linear_params = 64 * (8192 * 5120 * 2 + 1024 * 5120 * 2 + 25600 * 5120 * 3)
    assert parts["nvfp4_weight"].bytes_total == linear_params // 2  # 0.5 B a parameter
    assert parts["nvfp4_weight"].params == linear_params
    assert parts["block_scale"].bytes_total == linear_params // 16  # one FP8 byte per 16 weights
    assert parts["global_scale"].bytes_total == 4 * (448 * 2 + 128)  # F32 scalars
    assert parts["embedding"].bytes_total == parts["lm_head"].bytes_total == 151936 * 5120 * 2
    assert parts["norm"].bytes_total == 2 * (64 * (2 * 5120 + 2 * 128) + 5120)
    assert sum(p.bytes_total for p in parts.values()) == info.weights_bytes


def test_tensor_parallel_split(info: CheckpointInfo) -> None:
    one = {p.role: p for p in engine_parts(info, 1)}
    two = {p.role: p for p in engine_parts(info, 2)}
    for role in ("nvfp4_weight", "block_scale", "lm_head"):
        assert two[role].bytes_per_rank == one[role].bytes_total // 2
    for role in ("embedding", "norm", "global_scale"):  # replicated on every rank
        assert two[role].bytes_per_rank == one[role].bytes_total
    assert kv_bytes_per_token(info, tp_size=2) == 131072 // 2
    assert kv_bytes_per_token(info, tp_size=8) == 131072 // 8
    assert kv_bytes_per_token(info, tp_size=1, kv_cache_dtype="BF16") == 2 * 131072


def test_b200_fits_with_room(info: CheckpointInfo) -> None:
    plan = _plan(info, "B200", max_batch_size=8, max_seq_len=16384)
    free = KNOWN_GPUS["B200"].memory_bytes - plan.engine_bytes_estimate - plan.reserve_bytes
    assert plan.kv_cache_bytes == int(free * 0.9)
    assert plan.kv_tokens_capacity == plan.kv_cache_bytes // 131072
    assert plan.max_concurrent_sequences == plan.kv_tokens_capacity // 16384
    assert plan.max_concurrent_sequences >= 60
    assert plan.fits is True and plan.recommendation is None
    require_fit(plan)


def test_reserve_is_runtime_plus_activations_plus_logits(info: CheckpointInfo) -> None:
    plan = _plan(info, None, max_batch_size=8, max_num_tokens=8192)
    activations = 8192 * (2 * 25600 + 4 * 5120) * 2
    logits = 8 * 151936 * 4
    assert plan.reserve_bytes == RUNTIME_RESERVE_BYTES + activations + logits


def test_rtx_5090_does_not_fit_batch_8_and_recommends_settings_that_do(info: CheckpointInfo) -> None:
    plan = _plan(info, "RTX5090", max_batch_size=8, max_seq_len=16384)
    assert plan.fits is False
    assert plan.max_concurrent_sequences is not None and 1 <= plan.max_concurrent_sequences < 8
    changes = {alt["change"]: alt for alt in plan.alternatives}
    assert changes["max_batch_size"]["max_batch_size"] == plan.max_concurrent_sequences
    assert changes["max_seq_len"]["max_seq_len"] % 1024 == 0
    assert changes["tp_size"]["tp_size"] == 2
    assert f"max_batch_size = {plan.max_concurrent_sequences}" in (plan.recommendation or "")
    # Every recommended setting really fits.
    memory = KNOWN_GPUS["RTX5090"].memory_bytes
    for alt in plan.alternatives:
        settings = replace(
            PlanSettings(max_batch_size=8, max_seq_len=16384), **{alt["change"]: alt[alt["change"]]}
        )
        assert plan_memory(info, settings, gpu_memory_bytes=memory).fits is True
    with pytest.raises(PlanError, match="does not fit on RTX5090: KV cache holds") as caught:
        require_fit(plan)
    assert "\n" not in str(caught.value)


def test_recommendations_are_only_settings_a_catalogue_entry_takes(tmp_path: Path) -> None:
    # A BF16 KV cache would fit as FP8, but the KV dtype comes with the checkpoint: no build option changes it.
    bf16_kv = inspect_checkpoint(write_nvfp4_checkpoint(tmp_path / "c", kv_cache_quant_algo=None))
    assert bf16_kv.kv_cache_dtype == "BF16"
    plan = plan_memory(
        bf16_kv, PlanSettings(max_batch_size=4), gpu_memory_bytes=KNOWN_GPUS["RTX5090"].memory_bytes
    )
    assert plan.kv_bytes_per_token == 262144
    assert plan.fits is False and plan.alternatives
    for alt in plan.alternatives:
        assert alt["change"] in CatalogEntry.model_fields
        assert f"{alt['change']} = {alt[alt['change']]}" in (plan.recommendation or "")
    assert "FP8" not in (plan.recommendation or "")


def test_weights_alone_too_big_recommends_more_tp(info: CheckpointInfo) -> None:
    plan = plan_memory(info, PlanSettings(max_batch_size=1), gpu_memory_bytes=16 * GB)
    assert plan.fits is False
    assert plan.kv_cache_bytes == 0 and plan.max_concurrent_sequences == 0
    assert plan.alternatives == ({"change": "tp_size", "tp_size": 2},)
    assert (plan.recommendation or "").startswith("the engine and runtime reserve alone do not fit")
    hopeless = plan_memory(info, PlanSettings(), gpu_memory_bytes=1 * GB)
    assert "use a GPU with more memory" in (hopeless.recommendation or "")


def test_invalid_settings_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="max_batch_size must be at least 1"):
        PlanSettings(max_batch_size=0)
    with pytest.raises(UsageError, match="kv_cache_free_gpu_mem_fraction"):
        PlanSettings(kv_cache_free_gpu_mem_fraction=1.5)


def test_plan_cli_json_keys_and_numbers(qwen3_32b: Path) -> None:
    result = CliRunner().invoke(app, ["plan", str(qwen3_32b), "--gpu", "RTX5090", "--json"])
    assert result.exit_code == 1, result.output  # does not fit: `build` would refuse it
    data = json.loads(result.stdout)
    for key in JSON_KEYS:
        assert key in data
    assert data["kv_bytes_per_token"] == 131072
    assert data["fits"] is False and "max_batch_size = " in data["recommendation"]
    assert data["gpu_arch"] == "sm120" and data["arch_problem"] is None


def test_plan_cli_exit_status_says_whether_build_would_accept_it(qwen3_32b: Path) -> None:
    fits = CliRunner().invoke(app, ["plan", str(qwen3_32b), "--gpu", "B200"])
    assert fits.exit_code == 0, fits.output
    assert "fits" in fits.output
    too_big = CliRunner().invoke(app, ["plan", str(qwen3_32b), "--gpu", "RTX5090", "--max-batch-size", "64"])
    assert too_big.exit_code == 1
    assert "does not fit" in too_big.output


def test_plan_cli_on_hopper_reports_the_arch_problem(qwen3_32b: Path) -> None:
    result = CliRunner().invoke(app, ["plan", str(qwen3_32b), "--gpu", "H100", "--json"])
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert "NVFP4 needs compute capability ≥ 10.0" in data["arch_problem"]


def test_plan_cli_uses_catalogue_defaults_and_flags(qwen3_32b: Path, tmp_path: Path) -> None:
    import os

    Path(os.environ["TRTFORGE_CATALOG"]).write_text(
        f'[engines.q32]\nmodel = "{qwen3_32b}"\nquantization = "NVFP4"\nmax_batch_size = 4\nmax_seq_len = 8192\n'
    )
    result = CliRunner().invoke(app, ["plan", "q32", "--gpu-memory", "32GiB", "--tp-size", "2", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["max_batch_size"], data["max_seq_len"], data["tp_size"]) == (4, 8192, 2)
    assert data["gpu_memory_bytes"] == 32 << 30
    assert data["kv_bytes_per_token"] == 65536


def test_plan_cli_without_gpu_gives_sizes_only(qwen3_32b: Path) -> None:
    result = CliRunner().invoke(app, ["plan", str(qwen3_32b), "--json"])
    data = json.loads(result.stdout)
    assert data["fits"] is None and data["kv_tokens_capacity"] is None
    assert 19 * GB <= data["engine_bytes_estimate"] <= 22 * GB


@pytest.mark.parametrize("flag", ["--max-batch-size", "--max-seq-len", "--max-num-tokens", "--tp-size"])
def test_plan_cli_zero_is_refused_not_replaced_by_the_default(qwen3_32b: Path, flag: str) -> None:
    result = CliRunner().invoke(app, ["plan", str(qwen3_32b), "--gpu", "B200", flag, "0", "--json"])
    assert isinstance(result.exception, UsageError), result.output
    assert "must be at least 1" in str(result.exception)


def test_pytorch_backend_counts_cuda_graphs_in_what_the_kv_share_leaves(info: CheckpointInfo) -> None:
    engine = _plan(info, "B200", max_batch_size=8, max_seq_len=16384)
    plan = _plan(info, "B200", max_batch_size=8, max_seq_len=16384, backend="pytorch")
    # Same tensors loaded, same reserve: the weights are the engine estimate, the KV pool the same share.
    assert plan.engine_bytes_estimate == engine.engine_bytes_estimate
    assert plan.reserve_bytes == engine.reserve_bytes
    free = KNOWN_GPUS["B200"].memory_bytes - plan.engine_bytes_estimate - plan.reserve_bytes
    assert plan.kv_cache_bytes == int(free * 0.9) == engine.kv_cache_bytes
    # Graphs for decode batches 1..8, each up to 200 MB, captured after the KV pool: in the remaining 10 %.
    assert plan.settings.graph_batch_sizes() == (1, 2, 3, 4, 5, 6, 7, 8)
    assert plan.cuda_graph_bytes == 8 * CUDA_GRAPH_BYTES == 1_600_000_000
    assert plan.headroom_bytes == free - plan.kv_cache_bytes
    assert plan.fits is True and plan.trtllm_bench == {}
    assert engine.cuda_graph_bytes == 0 and engine.headroom_bytes is None
    data = plan.to_json()
    assert (data["backend"], data["cuda_graph_bytes"]) == ("pytorch", 1_600_000_000)
    assert data["cuda_graph_batch_sizes"] == [1, 2, 3, 4, 5, 6, 7, 8]


def test_pytorch_graphs_that_do_not_fit_beside_the_kv_cache_are_refused(info: CheckpointInfo) -> None:
    # One sequence of 16k tokens fits in 99 % of what an RTX 5090 leaves, but a graph does not fit in the 1 %.
    settings = {"max_batch_size": 1, "max_seq_len": 16384, "kv_cache_free_gpu_mem_fraction": 0.99}
    assert _plan(info, "RTX5090", **settings).fits is True  # an engine has no such graphs
    plan = _plan(info, "RTX5090", **settings, backend="pytorch")
    assert plan.max_concurrent_sequences is not None and plan.max_concurrent_sequences >= 1
    assert plan.headroom_bytes is not None and plan.headroom_bytes < CUDA_GRAPH_BYTES
    assert plan.fits is False
    assert "1 CUDA graphs (0.2 GB) do not fit" in (plan.recommendation or "")
    with pytest.raises(PlanError, match="kv_cache_free_gpu_mem_fraction"):
        require_fit(plan)


def test_pytorch_batch_recommendation_counts_its_graphs(info: CheckpointInfo) -> None:
    plan = _plan(info, "RTX5090", max_batch_size=8, max_seq_len=16384, backend="pytorch")
    assert plan.fits is False
    [batch] = [alt["max_batch_size"] for alt in plan.alternatives if alt["change"] == "max_batch_size"]
    memory = KNOWN_GPUS["RTX5090"].memory_bytes
    smaller = PlanSettings(max_batch_size=batch, max_seq_len=16384, backend="pytorch")
    assert plan_memory(info, smaller, gpu_memory_bytes=memory).fits is True
    assert len(smaller.graph_batch_sizes()) == batch


def test_cuda_graph_batch_sizes_every_small_one_then_powers_of_two() -> None:
    assert cuda_graph_batch_sizes(1) == [1]
    assert cuda_graph_batch_sizes(8) == list(range(1, 9))
    assert cuda_graph_batch_sizes(16) == list(range(1, 17))
    assert cuda_graph_batch_sizes(100) == [*range(1, 17), 32, 64, 100]
    assert cuda_graph_batch_sizes(128) == [*range(1, 17), 32, 64, 128]
    with pytest.raises(UsageError, match="tensorrt and pytorch"):
        PlanSettings(backend="reference")  # type: ignore[arg-type]
