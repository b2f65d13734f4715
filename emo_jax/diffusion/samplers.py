"""DDIM and DPM-Solver++ 2M as one step rule over per-step coefficient tables, and the jitted loop.

Both samplers read the model output at step i as a data prediction x0 (and noise prediction eps)
with that step's (alpha_i, sigma_i), then move the sample with a linear rule

    x_next = c_x[i] x + c_x0[i] x0 + c_prev[i] x0_prev + c_eps[i] eps + c_noise[i] z

where x0_prev is the previous step's x0 and z is standard normal noise. The tables are built once
in float64 numpy from the config, with diffusers' `DDIMScheduler` / `DPMSolverMultistepScheduler`
formulas; the step itself is a few element-wise ops, so `sample` compiles to one loop.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from emo_jax.config import DiffusionConfig
from emo_jax.diffusion.schedule import alphas_cumprod, inference_timesteps

TERMS = ("c_x", "c_x0", "c_prev", "c_eps", "c_noise")


@dataclasses.dataclass(frozen=True, eq=False)
class Sampler:
    """Static per-step tables (numpy, shape (n,)) plus how to read the model output."""

    timesteps: np.ndarray  # int64, descending: the t given to the model at each step
    alpha: np.ndarray  # sqrt(alpha_bar) at step i, to read the model output
    sigma: np.ndarray  # sqrt(1 - alpha_bar) at step i
    c_x: np.ndarray
    c_x0: np.ndarray
    c_prev: np.ndarray
    c_eps: np.ndarray
    c_noise: np.ndarray
    prediction_type: str
    clip_sample_range: float | None = None  # DDIM's clip_sample: clip x0 to [-r, r]

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    @property
    def stochastic(self) -> bool:
        """True if steps add fresh noise (DDIM with eta > 0)."""
        return bool(np.any(self.c_noise))


class SamplerState(NamedTuple):
    """The loop carry: the current sample and the previous step's data prediction."""

    sample: jax.Array
    prev_x0: jax.Array


def ddim(cfg: DiffusionConfig, num_steps: int, eta: float = 0.0) -> Sampler:
    """diffusers `DDIMScheduler`: x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev - s^2) eps + s z."""
    ac = alphas_cumprod(cfg)
    t = inference_timesteps(cfg, num_steps)
    prev = t - cfg.num_train_timesteps // num_steps
    final = 1.0 if cfg.set_alpha_to_one else ac[0]
    a, a_prev = ac[t], np.where(prev >= 0, ac[np.maximum(prev, 0)], final)
    std = eta * np.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))
    zero = np.zeros(num_steps)
    return Sampler(
        timesteps=t,
        alpha=np.sqrt(a),
        sigma=np.sqrt(1 - a),
        c_x=zero,
        c_x0=np.sqrt(a_prev),
        c_prev=zero,
        c_eps=np.sqrt(1 - a_prev - std**2),
        c_noise=std,
        prediction_type=cfg.prediction_type,
        clip_sample_range=cfg.clip_sample_range if cfg.clip_sample else None,
    )


def _karras(sigmas: np.ndarray, num_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Karras et al. (2022) sigmas (rho = 7) between the schedule's extremes, and their timesteps."""
    ramp = np.linspace(0, 1, num_steps)
    lo, hi = sigmas[0] ** (1 / 7), sigmas[-1] ** (1 / 7)
    karras = (hi + ramp * (lo - hi)) ** 7
    t = np.interp(np.log(karras), np.log(sigmas), np.arange(len(sigmas)))
    return karras, t.round().astype(np.int64)


def dpmpp_2m(cfg: DiffusionConfig, num_steps: int) -> Sampler:
    """diffusers `DPMSolverMultistepScheduler` (dpmsolver++, order 2, midpoint).

    In sigma = sqrt((1 - alpha_bar) / alpha_bar) and lambda = -log(sigma), with h = lambda_next -
    lambda_i, first order: x_next = (s_next / s_i) x + a_next (1 - e^-h) x0 (s, a: the VP sigma,
    alpha); second order adds the midpoint correction 0.5 a_next (1 - e^-h) (x0 - x0_prev) / r
    with r = (lambda_i - lambda_prev) / h. The first step is first order, and so is the last one
    when the final sigma is zero, or when lower_order_final and fewer than 15 steps.
    """
    ac = alphas_cumprod(cfg)
    if cfg.rescale_betas_zero_snr:
        ac[-1] = 2.0**-24  # as diffusers: keeps sigma finite at t = N-1
    all_sigmas = np.sqrt((1 - ac) / ac)
    if cfg.use_karras_sigmas:
        sig, t = _karras(all_sigmas, num_steps)
    else:
        t = inference_timesteps(cfg, num_steps, extra_point=True)
        sig = all_sigmas[t]
    last = 0.0 if cfg.final_sigmas_type == "zero" else all_sigmas[0]
    sig_next = np.append(sig[1:], last)

    def vp(s):  # (alpha, sigma) of the variance-preserving process at ratio s
        a = 1 / np.sqrt(s**2 + 1)
        return a, s * a

    alpha, sigma = vp(sig)
    alpha_next, sigma_next = vp(sig_next)
    step = np.arange(num_steps)
    first = (step == 0) | (
        (step == num_steps - 1)
        & ((cfg.lower_order_final and num_steps < 15) or cfg.final_sigmas_type == "zero")
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.log(np.append(np.inf, sig[:-1]) / sig) / np.log(sig / sig_next)  # h_prev / h
    weight = alpha_next * (1 - sig_next / sig)  # a_next (1 - e^-h)
    corr = np.where(first, 0.0, 0.5 * weight / np.where(first, 1.0, r))
    return Sampler(
        timesteps=t,
        alpha=alpha,
        sigma=sigma,
        c_x=sigma_next / sigma,
        c_x0=weight + corr,
        c_prev=-corr,
        c_eps=np.zeros(num_steps),
        c_noise=np.zeros(num_steps),
        prediction_type=cfg.prediction_type,
    )


def make_sampler(cfg: DiffusionConfig, num_steps: int | None = None) -> Sampler:
    """The sampler `cfg.sampler` with `num_steps` (default `cfg.num_inference_steps`) steps."""
    n = num_steps or cfg.num_inference_steps
    return dpmpp_2m(cfg, n) if cfg.sampler == "dpmpp_2m" else ddim(cfg, n, cfg.eta)


def predict_x0_eps(
    prediction_type: str, model_output: jax.Array, x: jax.Array, alpha, sigma
) -> tuple[jax.Array, jax.Array]:
    """(x0, eps) from the model output, for x = alpha x0 + sigma eps."""
    if prediction_type == "epsilon":
        return (x - sigma * model_output) / alpha, model_output
    if prediction_type == "v_prediction":  # v = alpha eps - sigma x0
        return alpha * x - sigma * model_output, alpha * model_output + sigma * x
    return model_output, (x - alpha * model_output) / sigma  # "sample"


def init_state(latents: jax.Array) -> SamplerState:
    """The state before the first step; `latents` is pure noise (init_noise_sigma = 1)."""
    return SamplerState(latents, jnp.zeros_like(latents))


def step(
    sampler: Sampler,
    state: SamplerState,
    model_output: jax.Array,
    i: int | jax.Array,
    noise: jax.Array | None = None,
) -> SamplerState:
    """Step i of the sampler (i may be traced); `noise` is needed iff `sampler.stochastic`."""
    x = state.sample.astype(jnp.float32)
    coef = {k: jnp.asarray(getattr(sampler, k), jnp.float32)[i] for k in ("alpha", "sigma", *TERMS)}
    x0, eps = predict_x0_eps(
        sampler.prediction_type, model_output.astype(jnp.float32), x, coef["alpha"], coef["sigma"]
    )
    if sampler.clip_sample_range is not None:
        x0 = jnp.clip(x0, -sampler.clip_sample_range, sampler.clip_sample_range)
    values = dict(c_x=x, c_x0=x0, c_prev=state.prev_x0, c_eps=eps, c_noise=noise)
    # Terms whose coefficient is zero at every step are left out of the program.
    x_next = sum(coef[k] * values[k] for k in TERMS if np.any(getattr(sampler, k)))
    return SamplerState(x_next.astype(state.sample.dtype), x0.astype(state.prev_x0.dtype))


def sample(
    denoise_fn: Callable[[jax.Array, jax.Array], jax.Array],
    latents: jax.Array,
    sampler: Sampler,
    key: jax.Array | None = None,
) -> jax.Array:
    """Runs all steps in one `lax.fori_loop`: `denoise_fn(x, t) -> model_output`, t an int32 scalar.

    Jit the caller (e.g. a function of params and latents that closes over the model); the loop
    then compiles once per latents shape. `key` is needed iff `sampler.stochastic`.
    """
    if sampler.stochastic and key is None:
        raise ValueError("this sampler adds noise at each step (eta > 0): pass a PRNG key")
    timesteps = jnp.asarray(sampler.timesteps, jnp.int32)

    def body(i, carry):
        state, key = carry
        noise = None
        if sampler.stochastic:
            key, sub = jax.random.split(key)
            noise = jax.random.normal(sub, latents.shape, jnp.float32)
        model_output = denoise_fn(state.sample, timesteps[i])
        return step(sampler, state, model_output, i, noise), key

    carry = (init_state(latents), key if sampler.stochastic else None)
    state, _ = jax.lax.fori_loop(0, sampler.num_steps, body, carry)
    return state.sample
