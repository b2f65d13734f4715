"""The diffusion loss of stages 1-3: VAE latents, condition dropout, noise, the EMO model."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from emo_jax.config import Config
from emo_jax.diffusion import add_noise, loss, sample_timesteps
from emo_jax.models.emo import EMOModel, encode_reference
from emo_jax.models.vae import AutoencoderKL, encode_images
from emo_jax.train.stages import merge


def batch_latents(vae, vae_params, batch: dict, key: jax.Array | None) -> tuple:
    """Target latents (B, F, h, w, 4), reference latent (B, h, w, 4), motion latents
    (B, n, h, w, 4) or None: one VAE pass over all frames of the batch."""
    frames, ref = batch["frames"], batch["reference"]
    motion = batch.get("motion_frames")
    b, f = frames.shape[:2]
    n = 0 if motion is None else motion.shape[1]
    parts = [frames.reshape(b * f, *frames.shape[2:]), ref]
    if n:
        parts.append(motion.reshape(b * n, *motion.shape[2:]))
    z = jax.lax.stop_gradient(encode_images(vae, vae_params, jnp.concatenate(parts), key))
    latents = z[: b * f].reshape(b, f, *z.shape[1:])  # (B, F, h, w, 4)
    ref_latent = z[b * f : b * f + b]
    motion_latents = z[b * f + b :].reshape(b, n, *z.shape[1:]) if n else None
    return latents, ref_latent, motion_latents


def condition_keep(cfg: Config, key: jax.Array, batch: int) -> dict[str, jax.Array]:
    """Per-example keep masks of the conditions this model has (False: dropped, the null form)."""
    t, emo = cfg.train, cfg.model.emo
    rates = {"reference": t.drop_reference}
    if emo.use_audio:
        rates["audio"] = t.drop_audio
    if emo.use_temporal:
        rates["motion"] = t.drop_motion
        if emo.use_speed:
            rates["speed"] = t.drop_speed
    rates = {k: r for k, r in rates.items() if r > 0}
    keys = jax.random.split(key, max(1, len(rates)))
    return {
        k: jax.random.bernoulli(kk, 1.0 - r, (batch,)) for kk, (k, r) in zip(keys, rates.items())
    }


def make_loss_fn(cfg: Config, model: EMOModel, vae: AutoencoderKL) -> Callable:
    """loss(trainable, frozen, vae_params, batch, key) -> (float32 diffusion loss, {})."""

    def loss_fn(trainable, frozen, vae_params, batch, key):
        params = merge(trainable, frozen)
        k_vae, k_t, k_noise, k_keep = jax.random.split(key, 4)
        latents, ref_latent, motion_latents = batch_latents(vae, vae_params, batch, k_vae)
        b = latents.shape[0]
        features = encode_reference(model, params, ref_latent, motion_latents)
        t = sample_timesteps(cfg.diffusion, k_t, b)
        noise = jax.random.normal(k_noise, latents.shape, jnp.float32)
        out = model.apply(
            {"params": params},
            add_noise(cfg.diffusion, latents, noise, t),
            t,
            features,
            batch.get("audio"),
            batch["mask"],
            batch.get("speed"),
            condition_keep(cfg, k_keep, b),
        )
        return loss(cfg.diffusion, out, latents, noise, t), {}

    return loss_fn


def make_eval_loss(cfg: Config, model: EMOModel, vae: AutoencoderKL) -> Callable:
    """`make_loss_fn`'s loss without condition dropout: the score of fixed batches with fixed
    keys."""
    no_drop = dataclasses.replace(
        cfg.train, drop_reference=0.0, drop_audio=0.0, drop_speed=0.0, drop_motion=0.0
    )
    loss_fn = make_loss_fn(dataclasses.replace(cfg, train=no_drop), model, vae)
    return lambda *args: loss_fn(*args)[0]
