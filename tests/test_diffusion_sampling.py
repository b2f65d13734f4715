"""The jitted sampling loop with classifier-free guidance against a step-by-step diffusers loop."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler
from test_diffusion import DDIM_KEYS, DPM_KEYS, SETTINGS, _kwargs, as_output, diffusers_scheduler

from emo_jax.diffusion import Guidance, guided, make_sampler, sample, schedule
from emo_jax.diffusion.guidance import FULL, REFERENCE_ONLY, UNCOND

SHAPE = (2, 3, 4, 4, 4)  # (B, F, h, w, C)
_rng = np.random.default_rng(0)
REF, AUDIO = (_rng.standard_normal(SHAPE[1:]).astype(np.float32) for _ in range(2))


def toy_model(xp, cfg, x, t, keep_ref, keep_audio):
    """A toy denoiser (xp = jnp or torch): predicts x0 from the sample, the time and the kept
    conditions (keep_*: per-row 0/1 of shape (rows, 1, 1, 1, 1)), in cfg.prediction_type."""
    ac = schedule.alphas_cumprod(cfg)
    alpha, sigma = xp.asarray(ac**0.5)[t], xp.asarray((1 - ac) ** 0.5)[t]
    ref, audio = xp.asarray(REF), xp.asarray(AUDIO)
    x0 = 0.5 * xp.tanh(x) + keep_ref * ref + keep_audio * audio * xp.sin(t * 0.01)
    return as_output(cfg.prediction_type, x0, x, alpha, sigma)


CASES = {
    "ddim_hallo_cfg": (SETTINGS["hallo"], Guidance(3.5)),
    "dpmpp_sd15_ref_audio": (
        dataclasses.replace(SETTINGS["sd15"], sampler="dpmpp_2m", num_inference_steps=20),
        Guidance(0.95, audio_scale=3.0),
    ),
    "ddim_eta_no_guidance": (dataclasses.replace(SETTINGS["linspace"], eta=0.5), Guidance(1.0)),
}


def _reference(cfg, guidance, latents, noises):
    """diffusers scheduler stepped in Python; each guidance pass a separate call, combined by hand."""
    if cfg.sampler == "ddim":
        sched = diffusers_scheduler(DDIMScheduler, cfg, DDIM_KEYS)
    else:
        sched = DPMSolverMultistepScheduler(**_kwargs(cfg, DPM_KEYS))
    sched.set_timesteps(cfg.num_inference_steps)
    x = torch.from_numpy(latents)
    for i, t in enumerate(sched.timesteps):
        u, r, c = (toy_model(torch, cfg, x, t, *keep) for keep in [(0, 0), (1, 0), (1, 1)])
        if guidance.audio_scale is not None:
            out = u + guidance.scale * (r - u) + guidance.audio_scale * (c - r)
        else:
            out = u + guidance.scale * (c - u)
        kwargs = {}
        if cfg.sampler == "ddim":
            kwargs = {"eta": cfg.eta, "variance_noise": noises[i] if cfg.eta else None}
        x = sched.step(out.float(), t, x, **kwargs).prev_sample
    return x.numpy()


@pytest.mark.parametrize("case", CASES)
def test_jitted_guided_loop_matches_diffusers(case):
    cfg, guidance = CASES[case]
    sampler = make_sampler(cfg)
    traces = []

    def denoise_fn(x, t, keep):
        traces.append(x.shape)
        kr, ka = (
            keep[c].astype(x.dtype)[:, None, None, None, None] for c in ("reference", "audio")
        )
        return toy_model(jnp, cfg, x, t, kr, ka)

    run = jax.jit(lambda latents, key: sample(guided(denoise_fn, guidance), latents, sampler, key))
    key = jax.random.key(7)
    latents = np.random.default_rng(1).standard_normal(SHAPE).astype(np.float32)
    out = np.asarray(run(jnp.asarray(latents), key))
    run(jnp.asarray(latents + 1), key)
    # The loop body is traced once, with every pass in one batch; the second call reuses it.
    assert traces == [(len(guidance.passes) * SHAPE[0], *SHAPE[1:])]

    noises = []
    for _ in range(sampler.num_steps):  # the same noise as `sample` draws
        key, sub = jax.random.split(key)
        noises.append(torch.tensor(np.asarray(jax.random.normal(sub, SHAPE))))
    expected = _reference(cfg, guidance, latents, noises)
    assert np.abs(expected).max() < 10
    np.testing.assert_allclose(out, expected, atol=1e-5, rtol=0)


def test_guidance_passes_and_formulas():
    assert Guidance(1.0).passes == (FULL,)
    assert Guidance(3.5).passes == (UNCOND, FULL)
    assert Guidance(0.95, audio_scale=3.0).passes == (UNCOND, REFERENCE_ONLY, FULL)
    u, r, c = jnp.array(1.0), jnp.array(2.0), jnp.array(4.0)
    assert float(Guidance(3.5).combine([u, c])) == pytest.approx(1 + 3.5 * 3)
    assert float(Guidance(0.95, 3.0).combine([u, r, c])) == pytest.approx(1 + 0.95 + 3.0 * 2)
    seen = {}

    def denoise_fn(x, t, keep):
        seen.update(keep)
        return x * (1 + keep["reference"] + 2 * keep["audio"])[:, None]

    out = guided(denoise_fn, Guidance(2.0, 5.0))(jnp.ones((2, 3)), jnp.int32(0))
    assert seen["reference"].tolist() == [False, False, True, True, True, True]
    assert seen["audio"].tolist() == [False, False, False, False, True, True]
    np.testing.assert_allclose(out, 1 + 2.0 * (2 - 1) + 5.0 * (4 - 2))


def test_stochastic_sampler_needs_key():
    sampler = make_sampler(dataclasses.replace(SETTINGS["sd15"], eta=1.0, num_inference_steps=3))
    with pytest.raises(ValueError, match="PRNG key"):
        sample(lambda x, t: x, jnp.zeros((1, 4)), sampler)
