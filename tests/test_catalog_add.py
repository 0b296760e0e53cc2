"""`trtforge add` on untrusted, shared catalogue files: locked, through links, keeping mode and style."""

from __future__ import annotations

import multiprocessing
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from trtforge.catalog import add_entry, load_catalog
from trtforge.errors import CatalogError


@pytest.fixture
def catalog() -> Path:
    return Path(os.environ["TRTFORGE_CATALOG"])


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trtforge", *args], capture_output=True, text=True, timeout=120
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error:"), result.stderr


def _add_after(barrier: multiprocessing.synchronize.Barrier, index: int) -> None:
    barrier.wait()
    add_entry(f"model-{index}", model=f"org/Model-{index}")


def test_concurrent_adds_lose_no_entry(catalog: Path) -> None:
    catalog.write_text("# shared\n")
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(20)
    workers = [context.Process(target=_add_after, args=(barrier, i)) for i in range(20)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
        assert worker.exitcode == 0
    names = set(load_catalog().names())
    assert {f"model-{i}" for i in range(20)} <= names


def test_dotted_keys_are_extended_in_their_style(catalog: Path) -> None:
    text = '# mine\nengines.old.model = "org/Old"\nengines.old.tp_size = 2\n# the end\n'
    catalog.write_text(text)
    add_entry("new", model="org/New", max_seq_len=2048)
    written = catalog.read_text()
    assert written.startswith(text)
    assert "[engines" not in written
    catalog_now = load_catalog()
    assert catalog_now.get("old").tp_size == 2
    assert catalog_now.get("new").max_seq_len == 2048


def test_an_inline_table_catalogue_is_extended_inline(catalog: Path) -> None:
    catalog.write_text('engines = { old = { model = "org/Old" } }\n')
    add_entry("new", model="org/New", tp_size=2)
    assert catalog.read_text().count("\n") == 1
    assert load_catalog().get("new").tp_size == 2
    assert load_catalog().get("old").model == "org/Old"


def test_shadowing_a_builtin_needs_replace(catalog: Path, tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match=r"built-in.*--replace"):
        add_entry("tiny", model=str(tmp_path))
    assert not catalog.exists()
    add_entry("tiny", model="org/Mine", replace=True)
    assert load_catalog().get("tiny").model == "org/Mine"


def test_a_symlinked_catalogue_stays_a_link_and_keeps_its_mode(catalog: Path, tmp_path: Path) -> None:
    real = tmp_path / "shared" / "engines.toml"
    real.parent.mkdir()
    real.write_text('[engines.old]\nmodel = "org/Old"\n')
    real.chmod(0o600)
    catalog.symlink_to(real)
    add_entry("new", model="org/New")
    assert catalog.is_symlink()
    assert stat.S_IMODE(real.stat().st_mode) == 0o600
    assert "new" in load_catalog()
    assert sorted(p.name for p in real.parent.iterdir()) == ["engines.toml"]


def test_a_name_too_long_for_the_store_is_refused_up_front(catalog: Path) -> None:
    name = "m" * 210
    with pytest.raises(CatalogError, match="at most 64"):
        add_entry(name, model="org/Model")
    catalog.write_text(f'[engines.{name}]\nmodel = "org/Model"\n')
    with pytest.raises(CatalogError, match="at most 64"):
        load_catalog()
    for args in (("build", name), ("verify", name), ("link", name, "/tmp")):
        result = _cli(*args)
        assert_one_line_error(result)
        assert "at most 64" in result.stderr


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'[engines.a]\nmodel = "x"\nmodel = "y"\n', "not valid TOML"),
        (b'[engines.a]\nmodel = "x"\n[engines.a]\nmodel = "y"\n', "not valid TOML"),
        (b'[engines.a]\nmodel = "\xff\xfe"\n', "not UTF-8"),
    ],
)
def test_a_broken_catalogue_is_one_line_for_add_and_build(
    catalog: Path, content: bytes, message: str
) -> None:
    catalog.write_bytes(content)
    for args in (("add", "b", "--model", "org/B"), ("build", "a")):
        result = _cli(*args)
        assert_one_line_error(result)
        assert message in result.stderr
    assert catalog.read_bytes() == content


def test_a_catalogue_in_an_unwritable_directory_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    # /proc refuses new files even to root (who ignores permission bits).
    monkeypatch.setenv("TRTFORGE_CATALOG", "/proc/engines.toml")
    with pytest.raises(CatalogError, match=r"/proc/engines\.toml"):
        add_entry("new", model="org/New")
    result = _cli("add", "new", "--model", "org/New")
    assert_one_line_error(result)
