"""`constants` reads the environment for everyone else; the variables keep their names and defaults."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from trtforge.constants import (
    aws_config_file,
    aws_profile,
    aws_shared_credentials_file,
    aws_variables,
    executable_path,
    library_path,
    tokenizers_without_threads,
)


def test_aws_settings_come_from_their_usual_variables(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("AWS_PROFILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert (aws_profile(), aws_shared_credentials_file(), aws_config_file()) == (
        "default",
        tmp_path / ".aws" / "credentials",
        tmp_path / ".aws" / "config",
    )
    monkeypatch.setenv("AWS_PROFILE", "ci")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "cfg"))
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "")
    monkeypatch.setenv("NOT_AWS", "x")
    assert (aws_profile(), aws_config_file()) == ("ci", tmp_path / "cfg")
    assert aws_variables(["AWS_REGION", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID", "NOT_AWS"]) == {
        "AWS_REGION": "eu-west-1"
    }


def test_search_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LD_LIBRARY_PATH", "")
    assert library_path() is None
    monkeypatch.setenv("LD_LIBRARY_PATH", "/opt/lib")
    assert library_path() == "/opt/lib"
    monkeypatch.delenv("PATH")
    assert executable_path() == os.defpath


@pytest.mark.parametrize("before", [None, "true"])
def test_tokenizers_run_without_threads_inside_the_block_only(
    monkeypatch: pytest.MonkeyPatch, before: str | None
) -> None:
    if before is None:
        monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)
    else:
        monkeypatch.setenv("TOKENIZERS_PARALLELISM", before)
    with pytest.raises(RuntimeError), tokenizers_without_threads():
        assert os.environ["TOKENIZERS_PARALLELISM"] == "false"
        raise RuntimeError("the block failed")
    assert os.environ.get("TOKENIZERS_PARALLELISM") == before
