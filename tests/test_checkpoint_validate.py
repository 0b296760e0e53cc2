"""Validation catches what would build into garbage, one line naming the tensor or file."""

from __future__ import annotations

from pathlib import Path

import pytest

from checkpoints import write_nvfp4_checkpoint
from trtforge.checkpoint.locate import inspect_checkpoint
from trtforge.checkpoint.validate import check_checkpoint, validate_checkpoint
from trtforge.errors import CheckpointError

Q_PROJ = "model.layers.1.self_attn.q_proj"


def _problems(path: Path, **kwargs: object) -> list[str]:
    return check_checkpoint(inspect_checkpoint(path), **kwargs)  # type: ignore[arg-type]


def test_a_good_checkpoint_has_no_problems(tmp_path: Path) -> None:
    ckpt = write_nvfp4_checkpoint(tmp_path / "c", tiny=True)
    assert _problems(ckpt) == []
    assert _problems(ckpt, quantization="NVFP4") == []
    validate_checkpoint(inspect_checkpoint(ckpt), quantization="nvfp4")


def test_wrong_block_scale_dtype_names_every_tensor(tmp_path: Path) -> None:
    ckpt = write_nvfp4_checkpoint(tmp_path / "c", tiny=True, scale_dtype="BF16")
    problems = _problems(ckpt)
    assert len(problems) == 2 * 7  # every quantized Linear of both layers
    assert any(f"{Q_PROJ}.weight_scale is BF16, NVFP4 block scales must be F8_E4M3" in p for p in problems)
    with pytest.raises(CheckpointError, match=r"weight_scale is BF16.*\(\+13 more") as caught:
        validate_checkpoint(inspect_checkpoint(ckpt))
    assert "\n" not in str(caught.value)


def test_wrong_block_scale_shape_names_the_tensor_and_file(tmp_path: Path) -> None:
    ckpt = write_nvfp4_checkpoint(
        tmp_path / "c", tiny=True, overrides={f"{Q_PROJ}.weight_scale": ("F8_E4M3", [256, 8])}
    )
    (problem,) = _problems(ckpt)
    assert f"{Q_PROJ}.weight_scale has shape [256, 8], expected [256, 16]" in problem
    assert "model-00001-of-00001.safetensors" in problem


def test_unpacked_weight_with_scales_is_refused(tmp_path: Path) -> None:
    ckpt = write_nvfp4_checkpoint(
        tmp_path / "c", tiny=True, overrides={f"{Q_PROJ}.weight": ("BF16", [256, 256])}
    )
    (problem,) = _problems(ckpt)
    assert f"{Q_PROJ}.weight is BF16 [256, 256], NVFP4 needs U8 [N, K/2]" in problem


def test_missing_or_wrong_global_scale(tmp_path: Path) -> None:
    ckpt = write_nvfp4_checkpoint(
        tmp_path / "c",
        tiny=True,
        overrides={
            f"{Q_PROJ}.weight_scale_2": None,
            "model.layers.0.mlp.up_proj.weight_scale_2": ("BF16", []),
        },
    )
    problems = _problems(ckpt)
    assert any(f"{Q_PROJ}.weight_scale_2 is missing" in p for p in problems)
    assert any("model.layers.0.mlp.up_proj.weight_scale_2 is BF16 []" in p for p in problems)


def test_missing_hf_quant_config_is_the_garbage_case(tmp_path: Path) -> None:
    ckpt = write_nvfp4_checkpoint(tmp_path / "c", tiny=True, hf_quant_config=False)
    with pytest.raises(
        CheckpointError, match=r"hf_quant_config\.json is missing, but .*weight is NVFP4-packed"
    ):
        validate_checkpoint(inspect_checkpoint(ckpt))


def test_config_quantization_config_must_agree(tmp_path: Path) -> None:
    ckpt = write_nvfp4_checkpoint(tmp_path / "c", tiny=True, config_quant_algo="FP8")
    (problem,) = _problems(ckpt)
    assert problem == (
        "config.json quantization_config.quant_algo FP8 contradicts hf_quant_config.json quant_algo NVFP4"
    )


def test_requested_quantization_must_match_the_checkpoint(tmp_path: Path) -> None:
    ckpt = write_nvfp4_checkpoint(tmp_path / "c", tiny=True)
    with pytest.raises(
        CheckpointError, match="requested quantization FP8 contradicts the checkpoint's NVFP4"
    ):
        validate_checkpoint(inspect_checkpoint(ckpt), quantization="FP8")


def test_declared_nvfp4_without_packed_tensors(tmp_path: Path) -> None:
    ckpt = write_nvfp4_checkpoint(tmp_path / "c", tiny=True, quantized=False)
    (tmp_path / "c" / "hf_quant_config.json").write_text('{"quantization": {"quant_algo": "NVFP4"}}')
    (problem,) = _problems(ckpt)
    assert "hf_quant_config.json says NVFP4 but no tensor has a weight_scale" in problem


def test_unsupported_architecture_names_config_json(tmp_path: Path) -> None:
    ckpt = write_nvfp4_checkpoint(
        tmp_path / "c", tiny=True, config={"architectures": ["Qwen3MoeForCausalLM"]}
    )
    with pytest.raises(
        CheckpointError, match=r"config\.json: architecture Qwen3MoeForCausalLM: .*PyTorch backend"
    ):
        validate_checkpoint(inspect_checkpoint(ckpt))
    other = write_nvfp4_checkpoint(tmp_path / "d", tiny=True, config={"architectures": ["FancyNewLM"]})
    assert _problems(other) == [
        "config.json: architecture FancyNewLM: not supported by the TensorRT-LLM engine flow"
    ]


def test_inspect_cli_lists_problems_and_exits_1(tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from trtforge.cli import app

    ckpt = write_nvfp4_checkpoint(tmp_path / "c", tiny=True, hf_quant_config=False)
    result = CliRunner().invoke(app, ["inspect", str(ckpt), "--json"])
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["quantization_config"]["quant_algo"] == "NVFP4"
    assert data["hf_quant_config"] is None
    assert data["problems"][0].startswith("hf_quant_config.json is missing")
