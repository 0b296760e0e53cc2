"""`preflight_build`: what `trtforge build` runs before a builder, on its own."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from checkpoints import write_nvfp4_checkpoint
from trtforge.builder.preflight import preflight_build
from trtforge.catalog import CatalogEntry
from trtforge.errors import CheckpointError, GpuError, PlanError
from trtforge.gpu import KNOWN_GPUS


@pytest.fixture(scope="module")
def qwen3_32b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_nvfp4_checkpoint(tmp_path_factory.mktemp("ckpt") / "Qwen3-32B-NVFP4")


def _entry(model: Path | str, **fields: object) -> CatalogEntry:
    return CatalogEntry(name="q32", model=str(model), quantization="NVFP4", **fields)  # type: ignore[arg-type]


def test_good_checkpoint_on_blackwell_passes_with_notes(qwen3_32b: Path) -> None:
    report = preflight_build(_entry(qwen3_32b), model_dir=None, gpu_arch="sm100", force=False)
    assert report.checkpoint is not None and report.checkpoint.quant_algo == "NVFP4"
    assert report.gpu_arch == "sm100" and report.gpu is None
    assert report.plan is not None and report.plan.fits is None
    assert report.warnings == ()
    assert "GPU memory unknown (no NVML): memory fit check skipped" in report.notes


def test_no_gpu_and_no_arch_skips_the_arch_check(qwen3_32b: Path) -> None:
    report = preflight_build(_entry(qwen3_32b), model_dir=None, gpu_arch=None, force=False)
    assert any("architecture check skipped" in note for note in report.notes)


def test_hopper_is_refused_in_one_line(qwen3_32b: Path) -> None:
    with pytest.raises(
        GpuError, match=r"q32: NVFP4 needs compute capability ≥ 10\.0 \(Blackwell\); sm90"
    ) as caught:
        preflight_build(_entry(qwen3_32b), model_dir=None, gpu_arch="sm90", force=False)
    assert "\n" not in str(caught.value)


def test_force_turns_refusals_into_warnings(qwen3_32b: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="trtforge.builder.preflight"):
        report = preflight_build(
            _entry(qwen3_32b),
            model_dir=None,
            gpu_arch="sm90",
            force=True,
            gpu_memory_bytes=KNOWN_GPUS["RTX5090"].memory_bytes,
        )
    assert len(report.warnings) == 2
    assert "NVFP4 needs compute capability" in report.warnings[0]
    assert "does not fit" in report.warnings[1]
    assert "--force" in caplog.text


def test_broken_checkpoint_is_refused_naming_the_file(tmp_path: Path) -> None:
    ckpt = write_nvfp4_checkpoint(tmp_path / "c", tiny=True, hf_quant_config=False)
    with pytest.raises(CheckpointError, match=r"hf_quant_config\.json is missing"):
        preflight_build(_entry(ckpt), model_dir=None, gpu_arch="sm100", force=False)


def test_model_dir_overrides_the_entry_model(tmp_path: Path) -> None:
    ckpt = write_nvfp4_checkpoint(tmp_path / "c", tiny=True)
    report = preflight_build(_entry("nvidia/Qwen3-32B-NVFP4"), model_dir=ckpt, gpu_arch="sm120", force=False)
    assert report.checkpoint is not None and report.checkpoint.path == ckpt.resolve()


def test_requested_quantization_contradiction(tmp_path: Path) -> None:
    ckpt = write_nvfp4_checkpoint(tmp_path / "c", tiny=True)
    entry = CatalogEntry(name="q", model=str(ckpt), quantization="FP8")
    with pytest.raises(CheckpointError, match="requested quantization FP8 contradicts"):
        preflight_build(entry, model_dir=None, gpu_arch="sm100", force=False)


def test_declared_memory_that_does_not_fit_is_refused(qwen3_32b: Path) -> None:
    with pytest.raises(PlanError, match=r"does not fit on the declared GPU: .* fits with max_batch_size = 4"):
        preflight_build(
            _entry(qwen3_32b),
            model_dir=None,
            gpu_arch="sm120",
            force=False,
            gpu_memory_bytes=KNOWN_GPUS["RTX5090"].memory_bytes,
        )
    report = preflight_build(
        _entry(qwen3_32b, max_batch_size=4),
        model_dir=None,
        gpu_arch="sm120",
        force=False,
        gpu_memory_bytes=KNOWN_GPUS["RTX5090"].memory_bytes,
    )
    assert report.plan is not None and report.plan.fits is True


def test_unreachable_hub_model_is_refused_and_forced_through(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    entry = _entry("nvidia/Qwen3-32B-NVFP4")
    with pytest.raises(CheckpointError, match="not in the Hugging Face cache"):
        preflight_build(entry, model_dir=None, gpu_arch="sm100", force=False)
    report = preflight_build(entry, model_dir=None, gpu_arch="sm100", force=True)
    assert report.checkpoint is None and report.plan is None and len(report.warnings) == 1


def test_reference_backend_is_not_checked() -> None:
    entry = CatalogEntry(name="tiny", model="builtin:tiny", backend="reference")
    report = preflight_build(entry, model_dir=None, gpu_arch="sm90", force=False)
    assert report.checkpoint is None and report.warnings == ()
