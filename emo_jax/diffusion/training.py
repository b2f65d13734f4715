"""Training side of the diffusion: forward noising, the prediction target and the loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from emo_jax.config import DiffusionConfig
from emo_jax.diffusion.schedule import alphas_cumprod, snr


def _at(table, t: jax.Array, ndim: int) -> jax.Array:
    """table[t] for t (B,), shaped (B, 1, ..., 1) to broadcast over an ndim-array."""
    values = jnp.asarray(table, jnp.float32)[t]
    return values.reshape(values.shape + (1,) * (ndim - values.ndim))


def _alpha_sigma(cfg: DiffusionConfig, t: jax.Array, ndim: int) -> tuple[jax.Array, jax.Array]:
    ac = alphas_cumprod(cfg)
    return _at(ac**0.5, t, ndim), _at((1 - ac) ** 0.5, t, ndim)


def sample_timesteps(cfg: DiffusionConfig, key: jax.Array, batch: int) -> jax.Array:
    """Uniform training timesteps in [0, num_train_timesteps), shape (batch,) int32."""
    return jax.random.randint(key, (batch,), 0, cfg.num_train_timesteps)


def add_noise(cfg: DiffusionConfig, x0: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
    """x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise; t (B,) int."""
    alpha, sigma = _alpha_sigma(cfg, t, x0.ndim)
    return alpha * x0 + sigma * noise


def velocity(cfg: DiffusionConfig, x0: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
    """v = sqrt(alpha_bar_t) noise - sqrt(1 - alpha_bar_t) x0 (diffusers `get_velocity`)."""
    alpha, sigma = _alpha_sigma(cfg, t, x0.ndim)
    return alpha * noise - sigma * x0


def target(cfg: DiffusionConfig, x0: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
    """What the model learns to predict: noise, velocity or x0, by `cfg.prediction_type`."""
    if cfg.prediction_type == "epsilon":
        return noise
    if cfg.prediction_type == "v_prediction":
        return velocity(cfg, x0, noise, t)
    return x0


def loss(
    cfg: DiffusionConfig, model_output: jax.Array, x0: jax.Array, noise: jax.Array, t: jax.Array
) -> jax.Array:
    """Mean squared error to the target, float32 scalar.

    With `cfg.snr_gamma` set, each example is weighted as in min-SNR-gamma (Hang et al. 2023,
    diffusers' training scripts): min(SNR_t, gamma) / SNR_t for epsilon, / (SNR_t + 1) for
    v_prediction, unchanged for sample.
    """
    err = (model_output.astype(jnp.float32) - target(cfg, x0, noise, t).astype(jnp.float32)) ** 2
    per_example = err.mean(axis=tuple(range(1, err.ndim)))
    if cfg.snr_gamma is None:
        return per_example.mean()
    s = _at(snr(cfg), t, 1)
    weight = jnp.minimum(s, cfg.snr_gamma)
    if cfg.prediction_type == "epsilon":
        weight = weight / s
    elif cfg.prediction_type == "v_prediction":
        weight = weight / (s + 1)
    return (per_example * weight).mean()
