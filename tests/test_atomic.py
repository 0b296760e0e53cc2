"""`staged_directory` and `rename_into_place`: a directory appears whole or not at all, and nothing is left over."""

from __future__ import annotations

from pathlib import Path

import pytest

from trtforge.atomic import rename_into_place, staged_directory


def _tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_staged_directory_appears_whole_and_nothing_is_left(tmp_path: Path) -> None:
    dest = tmp_path / "parent" / "repo"
    with staged_directory(dest) as staging:
        assert staging.parent == dest.parent and staging.name.startswith(".repo.")
        assert staging.is_dir() and not any(staging.iterdir())
        (staging / "a").mkdir()
        (staging / "a" / "f.txt").write_text("new")
        assert not dest.exists()  # nothing shows under the final name while it is being filled
    assert _tree(dest) == {"a/f.txt": "new"}
    assert sorted(p.name for p in dest.parent.iterdir()) == ["repo"]


def test_an_existing_directory_is_replaced_and_its_old_copy_deleted(tmp_path: Path) -> None:
    dest = tmp_path / "repo"
    (dest / "old").mkdir(parents=True)
    (dest / "old" / "f.txt").write_text("old")
    with staged_directory(dest) as staging:
        (staging / "f.txt").write_text("new")
        assert _tree(dest) == {"old/f.txt": "old"}  # the old one is served until the rename
    assert _tree(dest) == {"f.txt": "new"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]


def test_an_error_while_filling_leaves_dest_intact_and_no_staging(tmp_path: Path) -> None:
    dest = tmp_path / "repo"
    dest.mkdir()
    (dest / "f.txt").write_text("old")
    with pytest.raises(RuntimeError, match="half way"), staged_directory(dest) as staging:
        (staging / "f.txt").write_text("half")
        raise RuntimeError("half way")
    assert _tree(dest) == {"f.txt": "old"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]
    with pytest.raises(RuntimeError), staged_directory(tmp_path / "never"):
        raise RuntimeError("before anything existed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]


def test_a_failed_rename_puts_the_old_directory_back(tmp_path: Path) -> None:
    dest = tmp_path / "repo"
    dest.mkdir()
    (dest / "f.txt").write_text("old")
    with pytest.raises(FileNotFoundError), staged_directory(dest) as staging:
        staging.rmdir()  # the staging vanished: the rename into place fails after dest was moved aside
    assert _tree(dest) == {"f.txt": "old"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]


def test_rename_into_place_leaves_a_given_aside_to_its_owner(tmp_path: Path) -> None:
    dest, staging, aside = tmp_path / "entry", tmp_path / "tmp" / "build", tmp_path / "tmp" / "old.invalid"
    staging.mkdir(parents=True)
    (staging / "f.txt").write_text("new")
    dest.mkdir()
    (dest / "f.txt").write_text("broken")
    rename_into_place(staging, dest, aside=aside)
    assert _tree(dest) == {"f.txt": "new"}
    assert _tree(aside) == {"f.txt": "broken"}
    assert not staging.exists()
    fresh = tmp_path / "tmp" / "fresh"
    fresh.mkdir()
    rename_into_place(fresh, tmp_path / "other")
    assert (tmp_path / "other").is_dir() and not fresh.exists()
