"""Bad input from the user: the one error type (a one-line message naming the file and the
problem) and the checks of input and output paths that every command makes before its work."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


class InputError(ValueError):
    """Bad input from the user (file, config, checkpoint). The CLI prints it and exits 2."""


def _a(noun: str) -> str:
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


def check_input(path: str | Path, what: str, folder: bool | None = False) -> Path:
    """`path` if it exists and can be read: a non-empty file (`folder` False), a folder (True)
    or either (None); `what` names it in the message ("image", "audio file", ...)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: {what} not found")
    if folder is False and path.is_dir():
        raise InputError(f"{path}: is a folder, not {_a(what)}")
    if folder and not path.is_dir():
        raise InputError(f"{path}: is a file, not {_a(what)}")
    if path.is_file() and path.stat().st_size == 0:
        raise InputError(f"{path}: empty file (0 bytes)")
    if not os.access(path, os.R_OK | (os.X_OK if path.is_dir() else 0)):
        raise InputError(f"{path}: no permission to read it")
    return path


def check_output(path: str | Path, folder: bool = False) -> Path:
    """`path` if a file (or with `folder`, a folder) can be written there: not a folder where
    a file goes or the reverse, and the nearest existing folder above it is writable (missing
    folders are made when the output is written)."""
    path = Path(path)
    if not folder and path.is_dir():
        raise InputError(f"{path}: is a folder; give a file name")
    if folder and path.exists() and not path.is_dir():
        raise InputError(f"{path}: is a file, not a folder")
    place = path if folder and path.is_dir() else path.absolute().parent
    while not place.exists():  # (a path through a file does not exist either)
        place = place.parent
    if not place.is_dir():
        raise InputError(f"{path}: {place} is a file, not a folder")
    try:  # what the file system allows (root passes os.access even on read-only places)
        fd, probe = tempfile.mkstemp(dir=place, prefix=".emo_jax_probe.")
    except OSError as e:
        raise InputError(f"{path}: cannot write in {place} ({e.strerror})") from None
    os.close(fd)
    os.unlink(probe)
    return path
