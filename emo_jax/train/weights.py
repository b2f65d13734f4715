"""Where a stage's weights come from: fresh init, SD1.5 / AnimateDiff parts, the previous stage;
and the frozen VAE (a diffusers folder, or a random one of `model.vae` for CPU runs)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jax

from emo_jax.checkpoint import pretrained
from emo_jax.checkpoint.bundle import is_bundle, load_bundle
from emo_jax.checkpoint.emo_parts import init_from_pretrained
from emo_jax.checkpoint.manager import Checkpoints
from emo_jax.config import Config, ConfigError
from emo_jax.errors import InputError
from emo_jax.models.emo import EMOModel, compute_dtype, init_params
from emo_jax.models.vae import VAE_FORMAT, AutoencoderKL
from emo_jax.train.stages import load_matching, merge


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
    if t.sd15_unet or t.motion_adapter:
        params, reports = init_from_pretrained(params, t.sd15_unet, t.motion_adapter)
        lines += [r.summary() for r in reports]
    if t.init_from:
        params, report = load_matching(params, previous_stage_params(t.init_from), t.init_from)
        lines.append(report.summary())
    return jax.device_put(params, shardings), lines


def vae_module(cfg: Config) -> AutoencoderKL:
    """The frozen VAE at the model's compute dtype: `train.vae_path`'s architecture, else
    `model.vae`'s."""
    dtype = compute_dtype(cfg.model)
    config = cfg.model.vae
    if cfg.train.vae_path:
        config = pretrained.read_config(Path(cfg.train.vae_path), VAE_FORMAT)
    if config.latent_channels != cfg.model.unet.in_channels:
        raise ConfigError(
            f"the VAE has {config.latent_channels} latent channels, the UNet takes "
            f"{cfg.model.unet.in_channels}"
        )
    return AutoencoderKL(config, dtype=dtype)


def load_vae(cfg: Config, vae: AutoencoderKL) -> Any:
    """The VAE's params: from `train.vae_path`, else random with `train.vae_seed`."""
    if cfg.train.vae_path:
        return AutoencoderKL.from_pretrained(cfg.train.vae_path, vae.dtype)[1]
    key = jax.random.key(cfg.train.vae_seed, impl="unsafe_rbg")  # compiles faster than threefry
    return pretrained.init_params(vae, VAE_FORMAT, vae.config, key)
