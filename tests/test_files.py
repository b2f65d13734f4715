"""Folders written whole or not at all: an overwrite keeps the old folder until the new one
is in place."""

from pathlib import Path

import pytest

from emo_jax.files import atomic_folder


def write_folder(folder: Path, name: str) -> None:
    with atomic_folder(folder) as tmp:
        (tmp / name).write_text(name)


def contents(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in folder.iterdir()}


def test_overwrite_replaces_the_folder_and_leaves_nothing_beside_it(tmp_path):
    write_folder(tmp_path / "out", "old.txt")
    write_folder(tmp_path / "out", "new.txt")
    assert contents(tmp_path / "out") == {"new.txt": "new.txt"}
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_failing_block_leaves_the_old_folder(tmp_path):
    write_folder(tmp_path / "out", "old.txt")
    with pytest.raises(RuntimeError), atomic_folder(tmp_path / "out") as tmp:
        (tmp / "half.txt").write_text("half")
        raise RuntimeError("failed while writing")
    assert contents(tmp_path / "out") == {"old.txt": "old.txt"}
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_failure_between_the_renames_leaves_the_old_folder(tmp_path, monkeypatch):
    """The new folder cannot be renamed into place (after the old one has been moved aside):
    the old one is back, unchanged."""
    folder = tmp_path / "out"
    write_folder(folder, "old.txt")
    rename = Path.rename

    def failing_rename(self: Path, target: Path) -> Path:
        if Path(target) == folder and ".old." not in self.name:
            raise OSError("injected: rename of the new folder failed")
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", failing_rename)
    with pytest.raises(OSError, match="injected"):
        write_folder(folder, "new.txt")
    assert contents(folder) == {"old.txt": "old.txt"}
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
