"""A model bundle: everything `generate` needs in one folder.

    FOLDER/config.yaml   the resolved config (model, audio, diffusion, ...)
    FOLDER/params/       Orbax checkpoint of {"emo": EMO params, "vae": VAE params}

Written to a temporary folder and renamed when complete, so a bundle is whole or absent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp
import yaml

from emo_jax.config import Config, from_dict, to_dict
from emo_jax.errors import InputError
from emo_jax.files import atomic_folder
from emo_jax.weights.convert import check_shapes

PARTS = ("emo", "vae")


def save_bundle(folder: str | Path, config: Config, params: dict, overwrite: bool = False) -> None:
    """Writes config.yaml + Orbax params; an existing folder only with `overwrite`."""
    missing = [p for p in PARTS if p not in params]
    if missing:
        raise ValueError(f"bundle params need {', '.join(PARTS)}; missing {', '.join(missing)}")
    with atomic_folder(folder, overwrite) as tmp:
        (tmp / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
        # at most 1 GB copied to host buffers at a time: a large model is not held twice
        handler = ocp.PyTreeCheckpointHandler(
            save_concurrent_gb=1, save_device_host_concurrent_gb=1
        )
        with ocp.Checkpointer(handler) as ckptr:
            ckptr.save(tmp / "params", args=ocp.args.PyTreeSave(params))


def is_bundle(folder: str | Path) -> bool:
    """True for a folder holding config.yaml and params/."""
    folder = Path(folder)
    return (folder / "config.yaml").is_file() and (folder / "params").is_dir()


def load_bundle_config(folder: str | Path) -> Config:
    """The config a bundle was saved with."""
    path = Path(folder) / "config.yaml"
    if not path.is_file():
        raise InputError(f"{folder}: not an emo_jax model bundle (no config.yaml)")
    try:
        return from_dict(Config, yaml.safe_load(path.read_text()) or {}, str(path))
    except yaml.YAMLError as e:
        raise InputError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None


def load_bundle(folder: str | Path, abstract: Any | None = None) -> tuple[Config, dict]:
    """(config, {"emo": ..., "vae": ...}); with `abstract` (shapes) the params are checked to fit."""
    folder = Path(folder).absolute()
    config = load_bundle_config(folder)
    if not (folder / "params").is_dir():
        raise InputError(f"{folder}: not an emo_jax model bundle (no params/)")
    return config, restore_params(folder / "params", abstract)


def restore_params(path: Path, abstract: Any | None = None) -> Any:
    """An Orbax params tree; with `abstract` (shapes), restored as it after every key and shape
    is checked (Orbax itself would pad or cut a mismatched array)."""
    path = Path(path).absolute()
    try:
        with ocp.StandardCheckpointer() as ckptr:
            if abstract is None:
                return ckptr.restore(path)
            check_shapes(ckptr.metadata(path).item_metadata.tree, abstract, str(path))
            return ckptr.restore(path, abstract)
    except InputError:
        raise
    except (ValueError, KeyError, FileNotFoundError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"{path}: not readable Orbax params ({first[:300]})") from None
