"""`from_pretrained` / `save_pretrained` for diffusers- and transformers-format folders
(`config.json` + weights), on the one rule table of `convert.py`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax

from emo_jax.config import ConfigError, from_dict, to_dict
from emo_jax.errors import InputError
from emo_jax.files import atomic_folder, read_json, write_json
from emo_jax.weights.convert import Rename, torch_entries, torch_to_flax
from emo_jax.weights.io import find_weights, load_state_dict, save_safetensors, to_entries


@dataclasses.dataclass(frozen=True)
class FolderFormat:
    """How one PyTorch-library model folder maps to an emo_jax module."""

    class_name: str  # `_class_name` (diffusers) or `architectures[0]` (transformers)
    config_cls: type
    build: Callable[[Any, Any], nn.Module]  # (config, dtype) -> module
    dummy_inputs: Callable[[Any], tuple]  # config -> example inputs for init
    weight_stem: str  # "diffusion_pytorch_model" | "model"
    library: str = "diffusers"
    renames: tuple[Rename, ...] = ()
    ignore_keys: tuple[str, ...] = ()  # config.json keys that are bookkeeping, not architecture
    validate: Callable[[Any], None] = lambda cfg: None
    model_type: str | None = None  # transformers' `model_type`, written to config.json
    legacy_stems: tuple[str, ...] = ()  # older weight file names, e.g. "pytorch_model"
    # Loaded state dict -> the keys the rules expect (strip a task model's prefix, old names).
    adapt_state_dict: Callable[[dict], dict] = lambda sd: sd
    # (config, {key: Entry} to save) -> derived tensors the library also stores (fixed buffers).
    extra_tensors: Callable[[Any, dict], dict] = lambda cfg, sd: {}


def check_divides(cfg: Any, count_key: str, widths_key: str = "block_out_channels") -> None:
    """Raises ValueError naming both settings unless `cfg.<count_key>` (one count, or one per
    block) divides every width in `cfg.<widths_key>`: norm groups and attention heads."""
    widths, count = getattr(cfg, widths_key), getattr(cfg, count_key)
    counts = count if isinstance(count, (list, tuple)) else (count,) * len(widths)
    if any(w % c for w, c in zip(widths, counts)):
        raise ValueError(
            f"{widths_key} {list(widths)} are not all multiples of {count_key} {count}"
        )


def read_config(folder: Path, fmt: FolderFormat) -> Any:
    """A folder's config.json as `fmt.config_cls`, bookkeeping keys dropped."""
    path = folder / "config.json"
    raw = read_json(path)
    data = {k: v for k, v in raw.items() if not k.startswith("_") and k not in fmt.ignore_keys}
    try:
        cfg = from_dict(fmt.config_cls, data, str(path))
        fmt.validate(cfg)
    except ConfigError:
        raise
    except ValueError as e:
        raise InputError(f"{path}: {e}") from None
    return cfg


def abstract_params(module: nn.Module, fmt: FolderFormat, cfg: Any) -> Any:
    """Param shapes of `module` (jax.ShapeDtypeStruct leaves), nothing allocated."""
    return jax.eval_shape(module.init, jax.random.key(0), *fmt.dummy_inputs(cfg))["params"]


def init_params(module: nn.Module, fmt: FolderFormat, cfg: Any, rng: jax.Array) -> Any:
    """Freshly initialised params."""
    return jax.jit(module.init)(rng, *fmt.dummy_inputs(cfg))["params"]


def from_pretrained(
    folder: str | Path, fmt: FolderFormat, dtype: Any = None
) -> tuple[nn.Module, Any]:
    """(module, params) from a folder written by the PyTorch library's `save_pretrained`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: model folder not found")
    cfg = read_config(folder, fmt)
    module = fmt.build(cfg, dtype)
    weights = find_weights(folder, (fmt.weight_stem, *fmt.legacy_stems))
    params, _, _ = torch_to_flax(
        fmt.adapt_state_dict(load_state_dict(weights)),
        abstract_params(module, fmt, cfg),
        fmt.renames,
        source=str(weights),
    )
    return module, params


def config_json(cfg: Any, fmt: FolderFormat) -> dict:
    """The config.json that the PyTorch library writes for this config."""
    data = to_dict(cfg)
    if fmt.library == "diffusers":
        return {"_class_name": fmt.class_name, **data}
    model_type = {"model_type": fmt.model_type} if fmt.model_type else {}
    return {"architectures": [fmt.class_name], **model_type, **data}


def save_pretrained(params: Any, cfg: Any, folder: str | Path, fmt: FolderFormat) -> None:
    """Writes config.json + safetensors in the PyTorch library's format; complete or nothing."""
    with atomic_folder(folder) as tmp:
        write_json(config_json(cfg, fmt), tmp / "config.json")
        entries = torch_entries(params, fmt.renames)
        extra = fmt.extra_tensors(cfg, {e.key: e for e in entries})
        save_safetensors(entries + to_entries(extra), tmp / f"{fmt.weight_stem}.safetensors")
