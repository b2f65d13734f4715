"""Where a stage's weights come from: fresh init, SD1.5 / AnimateDiff parts, the previous stage;
and the frozen VAE (a diffusers folder, or a random one of `model.vae` for CPU runs)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jax
from flax.traverse_util import flatten_dict, unflatten_dict

from emo_jax.checkpoint.bundle import is_bundle, load_bundle, load_bundle_config
from emo_jax.checkpoint.manager import Checkpoints
from emo_jax.config import Config, ConfigError
from emo_jax.errors import InputError
from emo_jax.interop.emo_parts import init_from_pretrained
from emo_jax.models.emo import EMOModel, compute_dtype, init_params
from emo_jax.models.vae import VAE_FORMAT, AutoencoderKL
from emo_jax.train.stages import load_matching, merge
from emo_jax.weights import pretrained


def previous_stage_params(path: str | Path) -> Any:
    """EMO params of a previous stage: its bundle folder, or its run folder (the latest
    checkpoint: its EMA weights if it kept an EMA)."""
    path = Path(path)
    if is_bundle(path):
        return load_bundle(path)[1]["emo"]
    if (path / "checkpoints").is_dir():
        saved = Checkpoints(path / "checkpoints").restore_numpy()
        return merge(saved["state"]["ema"] or saved["state"]["params"], saved["frozen"])
    raise InputError(f"{path}: neither a model bundle nor a training run folder (checkpoints/)")


def initial_params(cfg: Config, model: EMOModel, shardings: Any) -> tuple[Any, list[str]]:
    """This stage's starting params, placed with `shardings`, and a line per source loaded.

    Order: fresh init (new layers at their zero init) <- SD1.5 UNet and AnimateDiff (if
    configured) <- the previous stage (every param it has, by path).
    """
    t = cfg.train
    params = jax.jit(functools.partial(init_params, model, t.seed), out_shardings=shardings)()
    lines = [f"fresh init (seed {t.seed})"]
    if t.reference_from_backbone:
        params = reference_from_backbone(params)
        lines.append("ReferenceNet: a copy of the backbone's init (as SD1.5 initialises both)")
    if t.sd15_unet or t.motion_adapter:
        params, reports = init_from_pretrained(params, t.sd15_unet, t.motion_adapter)
        lines += [r.summary() for r in reports]
    if t.init_from:
        params, report = load_matching(params, previous_stage_params(t.init_from), t.init_from)
        lines.append(report.summary())
    return jax.device_put(params, shardings), lines


def reference_from_backbone(params: dict) -> dict:
    """EMO params whose ReferenceNet is the backbone UNet's (every path both have): two UNets
    that start alike, as when SD1.5 initialises both, share a feature space from step 0, so
    reference-attention can copy the reference early in training from scratch."""
    ref = flatten_dict(params["reference_unet"])
    backbone = flatten_dict(params["denoising_unet"])
    return {**params, "reference_unet": unflatten_dict({k: backbone[k] for k in ref})}


def vae_module(cfg: Config) -> AutoencoderKL:
    """The frozen VAE at the model's compute dtype: the architecture of `train.vae_path` (a
    diffusers AutoencoderKL folder or a model bundle), else `model.vae`'s."""
    path = cfg.train.vae_path
    config = cfg.model.vae
    if path and is_bundle(path):
        config = load_bundle_config(path).model.vae
    elif path:
        config = pretrained.read_config(Path(path), VAE_FORMAT)
    if config.latent_channels != cfg.model.unet.in_channels:
        raise ConfigError(
            f"{path or 'model.vae'}: the VAE has {config.latent_channels} latent channels, the "
            f"UNet takes {cfg.model.unet.in_channels}"
        )
    return AutoencoderKL(config, dtype=compute_dtype(cfg.model))


def load_vae(cfg: Config, vae: AutoencoderKL) -> Any:
    """The VAE's params: from `train.vae_path`, else random with `train.vae_seed` (the same in
    every stage)."""
    path = cfg.train.vae_path
    if path and is_bundle(path):
        return load_bundle(path)[1]["vae"]
    if path:
        return AutoencoderKL.from_pretrained(path, vae.dtype)[1]
    key = jax.random.key(cfg.train.vae_seed, impl="unsafe_rbg")  # compiles faster than threefry
    return pretrained.init_params(vae, VAE_FORMAT, vae.config, key)
