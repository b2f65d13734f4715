"""Files written whole or not at all, with the permissions open() / mkdir() would give (a
replaced file keeps its mode), and JSON files read with one-line errors."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from emo_jax import interrupt
from emo_jax.errors import InputError


def output_mode(path: Path, folder: bool = False) -> int:
    """The permission bits a new output at `path` gets: an existing one's (replacing keeps the
    mode), else what the umask allows, as open() and mkdir() give (a temporary name's 0600 /
    0700 would make the result private)."""
    if path.exists():
        return path.stat().st_mode & 0o7777
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if folder else 0o666) & ~umask


@contextlib.contextmanager
def atomic_folder(folder: str | Path, overwrite: bool = True) -> Iterator[Path]:
    """Yields an empty temporary folder beside `folder`; when the block succeeds it replaces
    `folder`, when it fails (or the process is stopped: `emo_jax.interrupt`) it is removed: a
    folder is complete or absent. Without `overwrite` an existing `folder` is an error."""
    folder = Path(folder).absolute()
    if folder.exists() and not overwrite:
        raise InputError(f"{folder}: already exists (use --overwrite to replace it)")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    interrupt.register(tmp)
    try:
        os.chmod(tmp, output_mode(folder, folder=True))
        yield tmp
        replace_folder(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        interrupt.unregister(tmp)


def replace_folder(new: Path, folder: Path) -> None:
    """Renames `new` to `folder`. An existing `folder` is renamed aside first and deleted only
    once `new` is in place; if that fails it is renamed back."""
    if not folder.exists():
        new.rename(folder)
        return
    old = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.old."))
    folder.rename(old)  # onto the empty folder mkdtemp made: a name nothing else takes
    try:
        new.rename(folder)
    except BaseException:
        old.rename(folder)
        raise
    shutil.rmtree(old, ignore_errors=True)


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Calls `write(tmp_path)` then renames into place, so no half-written file is left."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    interrupt.register(tmp)
    try:
        os.chmod(tmp, output_mode(path))
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        interrupt.unregister(tmp)


def read_json(path: Path) -> dict:
    """A JSON config file, with a one-line error if it is missing or broken."""
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object")
    return data


def write_json(data: dict, path: Path) -> None:
    """Writes JSON atomically."""
    atomic_write(Path(path), lambda tmp: tmp.write_text(json.dumps(data, indent=2) + "\n"))
