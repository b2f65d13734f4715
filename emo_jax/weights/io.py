"""Reading and writing PyTorch-format weight files as dicts of numpy arrays.

`.safetensors` needs no torch; `.bin/.ckpt/.pth/.pt` use torch with `weights_only=True`.
bfloat16 is numpy's through `ml_dtypes` (importing it registers the type that safetensors reads).
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import json
import mmap
import struct
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from emo_jax.errors import InputError
from emo_jax.files import atomic_write

SAFE_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".bin", ".ckpt", ".pth", ".pt")


def _load_pickle(path: Path) -> Mapping[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise InputError(
            f"{path}: reading PyTorch pickle files needs torch (pip install 'emo-jax[torch]')"
        ) from None
    mapped = True
    try:
        try:  # memory-mapped: tensors are read from the file as they are used
            obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            mapped = False
            obj = torch.load(str(path), map_location="cpu", weights_only=True)  # legacy format
    except Exception as e:  # torch raises many kinds for bad files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            raise InputError(
                f"{path}: refused: the pickle holds more than tensors and would need "
                "weights_only=False, which can run arbitrary code"
            ) from None
        raise InputError(f"{path}: not a readable PyTorch checkpoint ({first})") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise InputError(f"{path}: expected a state dict, found {type(obj).__name__}")
    return PickleStateDict({k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}, mapped)


class PickleStateDict(Mapping):
    """A pickle's tensors, each copied out as numpy on access (bfloat16 as float32). Of a
    memory-mapped file, the pages a tensor was read from are then dropped from this process
    (they are the file's: read again if used again), so reading every tensor once holds the
    copies made, not the file as well."""

    def __init__(self, tensors: dict[str, Any], mapped: bool):
        self._tensors = tensors
        self._mapped = mapped and sys.platform == "linux"

    def __getitem__(self, key: str) -> np.ndarray:
        import torch

        v = self._tensors[key].detach()
        value = (v.float() if v.dtype == torch.bfloat16 else v).numpy().copy()
        if self._mapped:
            _drop_pages(v.untyped_storage())
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)


def _drop_pages(storage: Any) -> None:
    """madvise(MADV_DONTNEED) over a memory-mapped storage's whole pages: the private, never
    written file pages leave the resident set and are read from the file on the next use."""
    start, size = storage.data_ptr(), storage.nbytes()
    lo = start // mmap.PAGESIZE * mmap.PAGESIZE
    hi = -(-(start + size) // mmap.PAGESIZE) * mmap.PAGESIZE
    if size:
        _libc().madvise(ctypes.c_void_p(lo), ctypes.c_size_t(hi - lo), 4)  # 4: MADV_DONTNEED


@functools.lru_cache(maxsize=1)
def _libc() -> Any:
    return ctypes.CDLL(None, use_errno=True)


def load_state_dict(path: str | Path) -> Mapping[str, np.ndarray]:
    """A weight file, or a sharded set named by its `*.index.json`, as numpy arrays.

    Safetensors and (zip-format) pickles are memory-mapped and read tensor by tensor, so
    converting a checkpoint holds about one copy of the weights; legacy pickles load whole.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if path.name.endswith(".index.json"):
        try:
            shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
            raise InputError(f"{path}: not a valid shard index (no weight_map)") from None
        if not all(s.endswith(".safetensors") for s in shards):
            out: dict[str, np.ndarray] = {}
            for shard in shards:
                out.update(load_state_dict(path.parent / shard))
            return out
        files: dict[str, Path] = {}
        for shard in shards:
            files.update(LazyStateDict.open(path.parent / shard)._files)
        return LazyStateDict(files)
    if path.suffix in SAFE_SUFFIXES:
        return LazyStateDict.open(path)
    if path.suffix in PICKLE_SUFFIXES:
        return _load_pickle(path)
    raise InputError(f"{path}: unknown weight file type (expected .safetensors, .bin, .ckpt, .pth)")


def find_weights(folder: Path, stems: tuple[str, ...]) -> Path:
    """The weight file of a diffusers/transformers folder: safetensors first, then pickle."""
    for stem in stems:
        for name in (f"{stem}.safetensors", f"{stem}.safetensors.index.json"):
            if (folder / name).exists():
                return folder / name
    for stem in stems:
        for name in (f"{stem}.bin", f"{stem}.bin.index.json"):
            if (folder / name).exists():
                return folder / name
    raise InputError(f"{folder}: no weight file ({', '.join(s + '.safetensors' for s in stems)})")


_DTYPES = {
    np.dtype(np.float32): "F32",
    np.dtype(np.float16): "F16",
    np.dtype(ml_dtypes.bfloat16): "BF16",
    np.dtype(np.float64): "F64",
    np.dtype(np.int64): "I64",
    np.dtype(np.int32): "I32",
    np.dtype(np.int8): "I8",
    np.dtype(np.uint8): "U8",
    np.dtype(np.bool_): "BOOL",
}


@dataclasses.dataclass(frozen=True)
class Entry:
    """One tensor to write: its key, shape, dtype, and how to make it (called once, when written)."""

    key: str
    shape: tuple[int, ...]
    dtype: np.dtype
    make: Callable[[], np.ndarray]


def to_entries(tensors: dict[str, np.ndarray]) -> list[Entry]:
    """Arrays as entries for `save_safetensors`."""
    return [
        Entry(k, tuple(np.shape(v)), np.asarray(v).dtype, lambda v=v: v) for k, v in tensors.items()
    ]


def save_safetensors(tensors: dict[str, np.ndarray] | list[Entry], path: str | Path) -> None:
    """Writes safetensors atomically, one tensor at a time: the header comes from the shapes,
    so a tensor is made only when it is written and dropped after (streaming, bounded memory)."""
    entries = to_entries(tensors) if isinstance(tensors, dict) else list(tensors)
    entries.sort(key=lambda e: e.key)
    header, offset = {}, 0
    for e in entries:
        size = int(np.prod(e.shape, dtype=np.int64)) * np.dtype(e.dtype).itemsize
        header[e.key] = {
            "dtype": _DTYPES[np.dtype(e.dtype)],
            "shape": list(e.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(raw)))
            f.write(raw)
            for e in entries:
                value = np.ascontiguousarray(e.make(), dtype=e.dtype)
                if value.shape != e.shape:
                    raise ValueError(f"{e.key}: made {value.shape}, announced {e.shape}")
                f.write(value.tobytes())

    atomic_write(Path(path), write)


class LazyStateDict(Mapping):
    """A weight file's tensors, read one at a time on access (safetensors: memory-mapped)."""

    def __init__(self, files: dict[str, Path]):
        self._files = files  # key -> file
        self._handles: dict[Path, Any] = {}

    def __getitem__(self, key: str) -> np.ndarray:
        from safetensors import safe_open

        path = self._files[key]
        if path not in self._handles:
            self._handles[path] = safe_open(str(path), framework="numpy")
        return self._handles[path].get_tensor(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._files)

    def __len__(self) -> int:
        return len(self._files)

    @classmethod
    def open(cls, path: Path) -> LazyStateDict:
        """The tensors of one safetensors file (its header is checked now)."""
        from safetensors import SafetensorError, safe_open

        if not path.exists():
            raise InputError(f"{path}: file not found")
        try:
            with safe_open(str(path), framework="numpy") as f:
                return cls(dict.fromkeys(f.keys(), path))
        except (SafetensorError, OSError, ValueError) as e:
            raise InputError(f"{path}: not a readable safetensors file ({e})") from None
