"""Checkpoint inspection from safetensors headers, on sparse NVFP4-shaped checkpoints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from checkpoints import QWEN3_32B_CONFIG, write_nvfp4_checkpoint, write_safetensors
from trtforge.checkpoint.headers import read_safetensors_header
from trtforge.checkpoint.locate import inspect_checkpoint
from trtforge.checkpoint.model import CheckpointInfo
from trtforge.checkpoint.validate import check_checkpoint, validate_checkpoint
from trtforge.errors import CheckpointError

QWEN3_32B_LINEAR_PARAMS = 64 * (8192 * 5120 * 2 + 1024 * 5120 * 2 + 25600 * 5120 * 3)
QWEN3_32B_EMBED_PARAMS = 151936 * 5120


@pytest.fixture(scope="module")
def qwen3_32b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_nvfp4_checkpoint(tmp_path_factory.mktemp("ckpt") / "Qwen3-32B-NVFP4")


@pytest.fixture(scope="module")
def qwen3_32b_info(qwen3_32b: Path) -> CheckpointInfo:
    return inspect_checkpoint(qwen3_32b)


def test_generated_checkpoint_is_20_gb_on_paper_and_tiny_on_disk(qwen3_32b: Path) -> None:
    apparent = sum(p.stat().st_size for p in qwen3_32b.iterdir())
    on_disk = sum(p.stat().st_blocks * 512 for p in qwen3_32b.iterdir())
    assert apparent > 20e9
    assert on_disk < 50e6
    # The headers are real safetensors headers: the safetensors library itself reads them.
    from safetensors import safe_open

    first = sorted(qwen3_32b.glob("model-*.safetensors"))[0]
    with safe_open(str(first), "np") as f:
        assert "model.embed_tokens.weight" in f.keys()  # noqa: SIM118


def test_inspect_reads_architecture_quantization_and_sizes(qwen3_32b_info: CheckpointInfo) -> None:
    info = qwen3_32b_info
    assert info.architecture == "Qwen3ForCausalLM"
    assert info.dtype == "BF16"
    assert info.quant_algo == "NVFP4"
    assert info.kv_cache_dtype == "FP8"
    assert info.quantization is not None and info.quantization.exclude_modules == ("lm_head",)
    assert info.num_layers == 64 and info.num_kv_heads == 8 and info.head_dim == 128
    # Packed U8 weights count two parameters a byte; scales are not parameters.
    assert (
        info.params_total
        == QWEN3_32B_LINEAR_PARAMS + 2 * QWEN3_32B_EMBED_PARAMS + 64 * (4 * 5120 // 2 + 256) + 5120
    )
    assert 32.7e9 < info.params_total < 32.8e9
    histogram = info.dtype_histogram()
    assert histogram["U8"] == {"tensors": 448, "bytes": QWEN3_32B_LINEAR_PARAMS // 2}
    assert histogram["F8_E4M3"] == {"tensors": 448, "bytes": QWEN3_32B_LINEAR_PARAMS // 16}
    assert histogram["F32"]["tensors"] == 448 * 2 + 64 * 2  # weight_scale_2 + input_scale, k/v scales
    assert info.weights_bytes == sum(row["bytes"] for row in histogram.values())
    assert check_checkpoint(info) == []


def test_inspect_agrees_with_the_index_total_size(qwen3_32b: Path, qwen3_32b_info: CheckpointInfo) -> None:
    index = json.loads((qwen3_32b / "model.safetensors.index.json").read_text())
    assert qwen3_32b_info.weights_bytes == index["metadata"]["total_size"]
    assert {t.name for t in qwen3_32b_info.tensors} == set(index["weight_map"])


def test_inspect_of_a_20_gb_checkpoint_reads_only_headers(qwen3_32b: Path) -> None:
    # Correctness, not timing: every tensor is found, and no data page was ever written (so none was read).
    info = inspect_checkpoint(qwen3_32b)
    assert len(info.tensors) == 2179
    assert sum(p.stat().st_blocks for p in qwen3_32b.glob("*.safetensors")) * 512 < 10e6


def test_inspect_json_has_the_documented_keys(qwen3_32b_info: CheckpointInfo) -> None:
    data = qwen3_32b_info.to_json()
    for key in (
        "architecture",
        "dtype",
        "params_total",
        "quant_algo",
        "kv_cache_dtype",
        "exclude_modules",
        "dtype_histogram",
        "weights_bytes",
        "hf_quant_config",
        "quantization_config",
        "problems",
    ):
        assert key in data
    json.dumps(data)


def test_single_file_checkpoint_without_index(tmp_path: Path) -> None:
    config = {
        **QWEN3_32B_CONFIG,
        "num_hidden_layers": 1,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "vocab_size": 100,
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    write_safetensors(tmp_path / "model.safetensors", {"model.embed_tokens.weight": ("BF16", [100, 64])})
    info = inspect_checkpoint(tmp_path)
    assert info.params_total == 6400
    assert info.quant_algo is None
    assert info.kv_cache_dtype == "BF16"


def test_missing_directory_and_missing_config_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such checkpoint directory"):
        inspect_checkpoint(tmp_path / "absent")
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        inspect_checkpoint(tmp_path)


def test_truncated_shard_names_the_file(tmp_path: Path) -> None:
    ckpt = write_nvfp4_checkpoint(tmp_path / "c", tiny=True)
    shard = next(ckpt.glob("model-*.safetensors"))
    os.truncate(shard, shard.stat().st_size - 1)
    with pytest.raises(CheckpointError, match=rf"{shard.name}: truncated"):
        inspect_checkpoint(ckpt)


def test_corrupt_header_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes((20).to_bytes(8, "little") + b"{not json at all....")
    with pytest.raises(CheckpointError, match=r"model\.safetensors: corrupt safetensors header"):
        read_safetensors_header(path)


def test_missing_shard_is_a_problem_naming_it(tmp_path: Path) -> None:
    ckpt = write_nvfp4_checkpoint(tmp_path / "c", layers=4, shard_bytes=2_000_000_000)
    shards = sorted(ckpt.glob("model-*.safetensors"))
    shards[-1].unlink()
    with pytest.raises(CheckpointError, match=rf"shard {shards[-1].name} is missing"):
        validate_checkpoint(inspect_checkpoint(ckpt))


def test_hub_id_offline_and_not_cached_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match=r"not in the Hugging Face cache.*HF_HUB_OFFLINE") as caught:
        inspect_checkpoint("nvidia/Qwen3-32B-NVFP4")
    assert "\n" not in str(caught.value)


def test_hub_id_unreachable_is_one_line_and_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import free_port

    env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}"}
    env.pop("HTTP_PROXY", None), env.pop("HTTPS_PROXY", None), env.pop("http_proxy", None)
    env.pop("https_proxy", None)
    done = subprocess.run(
        [sys.executable, "-m", "trtforge", "inspect", "nvidia/Qwen3-32B-NVFP4"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "cannot reach the Hugging Face hub" in done.stderr
    assert "Traceback" not in done.stderr


def test_hub_id_offline_reads_the_cached_snapshot(tmp_path: Path) -> None:
    # A Hugging Face cache laid out as huggingface_hub writes it: refs/main → snapshots/<commit>/.
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf" / "hub" / "models--nvidia--Qwen3-32B-NVFP4"
    write_nvfp4_checkpoint(repo / "snapshots" / commit, tiny=True)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    env.pop("HF_HUB_CACHE", None)
    done = subprocess.run(
        [sys.executable, "-m", "trtforge", "inspect", "nvidia/Qwen3-32B-NVFP4", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["source"] == "nvidia/Qwen3-32B-NVFP4"
    assert data["quant_algo"] == "NVFP4" and data["problems"] == []
