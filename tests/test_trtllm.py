"""The neutral probe of the installed TensorRT-LLM: its version, and whether it still has the TensorRT backend."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from trtforge.trtllm import has_tensorrt_backend, installed_trtllm_version

STANDINS = Path(__file__).parent / "standins"


@pytest.mark.parametrize(
    ("version", "has_it"),
    [
        ("0.21.0", True),
        ("1.0.3.2510", True),
        ("1.1.0", True),
        ("1.2.0", True),
        ("1.2.9rc3", True),
        # The 1.3 pre-releases cut before the removal reached main still have it (trtllm.py cites the facts).
        ("1.3.0rc1", True),
        ("1.3.0rc5.post2", True),
        ("1.3.0rc21", True),
        ("1.3.0rc21.post1", True),
        ("1.3.0rc22", False),
        ("1.3.0rc23", False),
        ("1.3.0", False),
        ("1.3", False),
        ("2.0.0", False),
        ("not-a-version", True),
    ],
)
def test_the_tensorrt_backend_is_in_1_2_and_early_1_3_rcs_and_gone_from_1_3(
    version: str, has_it: bool
) -> None:
    assert has_tensorrt_backend(version) is has_it


def test_installed_version_is_the_stand_in_or_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(STANDINS))
    assert installed_trtllm_version(sys.executable) == "1.0.0"
    monkeypatch.setenv("TRTFORGE_TRTLLM_PYTHON", sys.executable)
    assert installed_trtllm_version() == "1.0.0"
    monkeypatch.delenv("PYTHONPATH")
    assert installed_trtllm_version() is None
    monkeypatch.setenv("TRTFORGE_TRTLLM_PYTHON", "/no/such/python")
    assert installed_trtllm_version() is None


def test_the_13_stand_in_is_probed_without_importing_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    # Its version.py computes the version (an override for tests): the probe runs that file alone, so it finds
    # the computed version, which reading the file as text did not.
    monkeypatch.setenv("PYTHONPATH", str(STANDINS / "trtllm13"))
    assert installed_trtllm_version(sys.executable) == "1.3.0"
    monkeypatch.setenv("TRTFORGE_STANDIN_TRTLLM_VERSION", "1.4.1")
    assert installed_trtllm_version(sys.executable) == "1.4.1"
