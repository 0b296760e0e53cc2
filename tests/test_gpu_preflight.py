"""GPU detection on this machine (no driver: the real NVML path), the catalogue, and the arch refusal."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from trtforge.cli import app
from trtforge.errors import GpuError, UsageError
from trtforge.gpu import (
    KNOWN_GPUS,
    MIB,
    arch_from_capability,
    capability_from_arch,
    check_arch_supports,
    detect_gpu_arch,
    detect_gpus,
    lookup_gpu,
    match_known_gpu,
    parse_memory_size,
)


def test_no_driver_is_one_clear_line() -> None:
    # This machine has no NVIDIA driver: NVML itself fails to load, and we say so in one line.
    with pytest.raises(GpuError, match="no NVIDIA driver found") as caught:
        detect_gpus()
    assert "\n" not in str(caught.value)


def test_detect_gpu_arch_never_raises_without_a_gpu() -> None:
    assert detect_gpu_arch() is None


def test_gpus_command_without_driver_exits_with_one_line() -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "trtforge", "gpus"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert "no NVIDIA driver found" in done.stderr
    assert "Traceback" not in done.stderr


def test_known_gpus_listing_as_json() -> None:
    result = CliRunner().invoke(app, ["gpus", "--known", "--json"])
    assert result.exit_code == 0
    rows = {row["key"]: row for row in json.loads(result.stdout)}
    assert rows["B200"]["arch"] == "sm100" and rows["B300"]["arch"] == "sm103"
    assert rows["RTX5090"]["memory_total_bytes"] == 32_607 * MIB


@pytest.mark.parametrize(
    ("arch", "capability"),
    [("sm100", (10, 0)), ("sm_120", (12, 0)), ("SM90", (9, 0)), ("sm100a", (10, 0)), ("10.3", (10, 3))],
)
def test_arch_strings(arch: str, capability: tuple[int, int]) -> None:
    assert capability_from_arch(arch) == capability
    assert arch_from_capability(capability) == arch_from_capability(capability_from_arch(arch))


def test_unparsable_arch_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="unknown GPU architecture 'hopper'"):
        capability_from_arch("hopper")


@pytest.mark.parametrize("arch", ["sm90", "sm89", "sm80"])
def test_nvfp4_refused_before_blackwell(arch: str) -> None:
    with pytest.raises(
        GpuError, match=rf"NVFP4 needs compute capability ≥ 10\.0 \(Blackwell\); {arch}"
    ) as caught:
        check_arch_supports(arch, "NVFP4")
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("arch", ["sm100", "sm103", "sm120"])
def test_nvfp4_accepted_on_blackwell(arch: str) -> None:
    check_arch_supports(arch, "nvfp4")


def test_other_quantizations() -> None:
    check_arch_supports("sm90", "FP8")
    check_arch_supports("sm80", None)
    check_arch_supports("sm80", "W4A16_AWQ")
    with pytest.raises(GpuError, match=r"FP8 needs compute capability ≥ 8\.9"):
        check_arch_supports("sm80", "FP8")


def test_catalogue_lookup_and_nvml_name_matching() -> None:
    assert lookup_gpu("rtx pro 6000").key == "RTXPRO6000"
    assert lookup_gpu("b200").key == "B200"
    assert lookup_gpu("NVIDIA GeForce RTX 5090").key == "RTX5090"
    assert match_known_gpu("NVIDIA GB200") is KNOWN_GPUS["GB200"]
    assert match_known_gpu("NVIDIA B200") is KNOWN_GPUS["B200"]
    assert match_known_gpu("NVIDIA H100 80GB HBM3") is KNOWN_GPUS["H100"]
    assert match_known_gpu("Tesla T4") is None
    with pytest.raises(UsageError, match=r"unknown GPU 'A100'.*known GPUs are B200"):
        lookup_gpu("A100")


def test_memory_sizes() -> None:
    assert parse_memory_size("32GiB") == 32 << 30
    assert parse_memory_size("96GB") == 96_000_000_000
    assert parse_memory_size("183359MiB") == 183_359 * MIB
    assert parse_memory_size("1024") == 1024
    with pytest.raises(UsageError):
        parse_memory_size("lots")
