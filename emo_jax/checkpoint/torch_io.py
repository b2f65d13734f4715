"""Reading and writing PyTorch-format weight files as dicts of numpy arrays.

`.safetensors` needs no torch; `.bin/.ckpt/.pth/.pt` use torch with `weights_only=True`.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from emo_jax.errors import InputError

SAFE_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".bin", ".ckpt", ".pth", ".pt")


def _load_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise InputError(f"{path}: not a readable safetensors file ({e})") from None


def _load_pickle(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise InputError(
            f"{path}: reading PyTorch pickle files needs torch (pip install 'emo-jax[torch]')"
        ) from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
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
    out = {}
    for k, v in obj.items():
        if isinstance(v, torch.Tensor):
            v = v.detach()
            out[k] = (v.float() if v.dtype == torch.bfloat16 else v).numpy()
    return out


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """A weight file, or a sharded set named by its `*.index.json`, as numpy arrays."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if path.name.endswith(".index.json"):
        try:
            index = json.loads(path.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise InputError(f"{path}: not a valid shard index (no weight_map)") from None
        out: dict[str, np.ndarray] = {}
        for shard in sorted(set(index.values())):
            out.update(load_state_dict(path.parent / shard))
        return out
    if path.suffix in SAFE_SUFFIXES:
        return _load_safetensors(path)
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


def atomic_write(path: Path, write) -> None:
    """Calls `write(tmp_path)` then renames into place, so no half-written file is left."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_safetensors(state_dict: dict[str, np.ndarray], path: str | Path) -> None:
    """Writes a state dict as safetensors, atomically."""
    from safetensors.numpy import save_file

    atomic_write(Path(path), lambda tmp: save_file(state_dict, str(tmp)))


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
