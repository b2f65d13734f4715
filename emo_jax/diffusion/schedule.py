"""The DDPM noise schedule: diffusers' float32 values, bit for bit, computed in numpy (with zero
terminal SNR to within torch's float32 sqrt, whose rounding depends on the CPU).

`alphas_cumprod[t]` is alpha_bar_t: x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) noise.
"""

from __future__ import annotations

import numpy as np

from emo_jax.config import DiffusionConfig


def _linspace32(start: float, end: float, n: int) -> np.ndarray:
    """torch.linspace(start, end, n) in float32, bit for bit (a fused multiply-add from each end)."""
    start32, end32 = np.float32(start), np.float32(end)
    step = np.float64((end32 - start32) / np.float32(n - 1))
    i = np.arange(n)
    # For beta-like ranges the float64 product and sum are exact: one rounding, as in an FMA.
    out = np.where(
        i < n // 2, np.float64(start32) + step * i, np.float64(end32) - step * (n - 1 - i)
    )
    return out.astype(np.float32)


def _cumprod(alphas: np.ndarray) -> np.ndarray:
    """Cumulative product accumulated in float64, rounded to float32 (as torch.cumprod on CPU)."""
    return np.cumprod(alphas.astype(np.float64)).astype(np.float32)


def betas(cfg: DiffusionConfig) -> np.ndarray:
    """Per-step betas (N,) float32: linear, or linear in sqrt(beta) (SD's "scaled_linear")."""
    n = cfg.num_train_timesteps
    if cfg.beta_schedule == "linear":
        b = _linspace32(cfg.beta_start, cfg.beta_end, n)
    else:
        b = _linspace32(cfg.beta_start**0.5, cfg.beta_end**0.5, n) ** 2
    return rescale_zero_terminal_snr(b) if cfg.rescale_betas_zero_snr else b


def rescale_zero_terminal_snr(b: np.ndarray) -> np.ndarray:
    """Shifts and scales sqrt(alpha_bar) so that alpha_bar_{N-1} = 0 (Lin et al. 2023, Alg. 1)."""
    root = np.sqrt(_cumprod(1 - b))
    first, last = root[0], root[-1]
    alpha_bar = ((root - last) * (first / (first - last))) ** 2
    alphas = np.concatenate([alpha_bar[:1], alpha_bar[1:] / alpha_bar[:-1]])
    return 1 - alphas


def alphas_cumprod(cfg: DiffusionConfig) -> np.ndarray:
    """alpha_bar_t for t = 0..N-1, float32 exactly as diffusers computes it."""
    return _cumprod(1 - betas(cfg))


def snr(cfg: DiffusionConfig) -> np.ndarray:
    """Signal-to-noise ratio alpha_bar_t / (1 - alpha_bar_t) for t = 0..N-1."""
    ac = alphas_cumprod(cfg)
    return ac / (1.0 - ac)


def inference_timesteps(
    cfg: DiffusionConfig, num_steps: int, extra_point: bool = False
) -> np.ndarray:
    """Descending timesteps for `num_steps` sampling steps (diffusers `set_timesteps`).

    DDIM spaces `num_steps` points; DPM-Solver spaces `num_steps + 1` and drops the last one
    (`extra_point=True`) for "linspace" and "leading" ("trailing" is the same for both).
    """
    n_train = cfg.num_train_timesteps
    if not 0 < num_steps <= n_train:
        raise ValueError(f"num_inference_steps must be in 1..{n_train}, got {num_steps}")
    if cfg.timestep_spacing == "trailing":
        return np.round(np.arange(n_train, 0, -n_train / num_steps)).astype(np.int64) - 1
    points = num_steps + 1 if extra_point else num_steps
    if cfg.timestep_spacing == "linspace":
        t = np.linspace(0, n_train - 1, points).round()[::-1]
    else:  # leading
        t = (np.arange(points) * (n_train // points))[::-1] + cfg.steps_offset
    return t[:num_steps].astype(np.int64)
