"""emo_jax.diffusion against diffusers' schedulers: schedule, noising, DDIM, DPM-Solver++ 2M."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

from emo_jax.config import ConfigError, DiffusionConfig, load_config
from emo_jax.diffusion import schedule, training
from emo_jax.diffusion.samplers import ddim, dpmpp_2m, init_state, make_sampler, step

SHAPE = (2, 4, 6, 6)

SETTINGS = {
    # Stable Diffusion 1.5's scheduler config.
    "sd15": DiffusionConfig(),
    # Hallo: zero terminal SNR, v-prediction, trailing spacing (DDIMScheduler's set_alpha_to_one).
    "hallo": DiffusionConfig(
        beta_schedule="linear",
        prediction_type="v_prediction",
        rescale_betas_zero_snr=True,
        timestep_spacing="trailing",
        set_alpha_to_one=True,
    ),
    "linspace": DiffusionConfig(timestep_spacing="linspace", steps_offset=0),
    "sample_clipped": DiffusionConfig(
        beta_schedule="linear", prediction_type="sample", clip_sample=True, clip_sample_range=1.5
    ),
}

SCHEDULE_KEYS = (
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "beta_schedule",
    "prediction_type",
    "rescale_betas_zero_snr",
    "timestep_spacing",
    "steps_offset",
)
DDIM_KEYS = SCHEDULE_KEYS + ("set_alpha_to_one", "clip_sample", "clip_sample_range")
DPM_KEYS = SCHEDULE_KEYS + ("lower_order_final", "use_karras_sigmas", "final_sigmas_type")


def _kwargs(cfg: DiffusionConfig, keys) -> dict:
    return {k: getattr(cfg, k) for k in keys}


def diffusers_scheduler(cls, cfg: DiffusionConfig, keys):
    """diffusers' DDPM or DDIM scheduler for cfg, on our schedule when it has zero terminal SNR
    (theirs then depends on the CPU's float32 sqrt; test_schedule_matches_diffusers bounds the
    difference), so that the step formulas are compared on one schedule."""
    sched = cls(**_kwargs(cfg, keys))
    if cfg.rescale_betas_zero_snr:
        sched.alphas_cumprod = torch.from_numpy(schedule.alphas_cumprod(cfg))
    return sched


def _noise(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *SHAPE)).astype(np.float32)


def as_output(prediction_type: str, x0, x, alpha: float, sigma: float):
    """The model output that predicts x0 from x = alpha x0 + sigma eps (numpy, jnp or torch)."""
    eps = (x - alpha * x0) / sigma
    if prediction_type == "epsilon":
        return eps
    return alpha * eps - sigma * x0 if prediction_type == "v_prediction" else x0


def _run_both(cfg, ours, theirs, noises=None, **step_kwargs):
    """Steps our sampler and a diffusers scheduler side by side; the max error at every step.

    The 'model' is deterministic and pseudo-random: at step i it predicts x0 = target + 0.3 r_i
    (fixed random r_i), expressed in cfg.prediction_type for the sample it is given, so samples
    stay at the scale of real latents.
    """
    rng = np.random.default_rng(1)
    x = rng.standard_normal(SHAPE).astype(np.float32)
    x0s = rng.standard_normal(SHAPE).astype(np.float32) + 0.3 * _noise(ours.num_steps, 2)
    ac = np.asarray(schedule.alphas_cumprod(cfg), np.float64)
    state, xt = init_state(jnp.asarray(x)), torch.from_numpy(x)
    errors = []
    for i, t in enumerate(theirs.timesteps):
        alpha, sigma = ac[t] ** 0.5, (1 - ac[t]) ** 0.5
        ours_out = as_output(cfg.prediction_type, x0s[i], np.asarray(state.sample), alpha, sigma)
        their_out = as_output(cfg.prediction_type, x0s[i], xt.numpy(), alpha, sigma)
        noise = None if noises is None else noises[i]
        state = step(ours, state, jnp.asarray(ours_out, jnp.float32), i, noise)
        if noise is not None:
            step_kwargs["variance_noise"] = torch.from_numpy(noise)
        xt = theirs.step(torch.tensor(their_out, dtype=torch.float32), t, xt, **step_kwargs)
        xt = xt.prev_sample
        errors.append(float(np.abs(np.asarray(state.sample) - xt.numpy()).max()))
    assert np.all(np.isfinite(xt.numpy())) and np.abs(xt.numpy()).max() < 10
    return errors


@pytest.mark.parametrize("name", SETTINGS)
def test_schedule_matches_diffusers(name):
    cfg = SETTINGS[name]
    ref = DDPMScheduler(**_kwargs(cfg, SCHEDULE_KEYS))
    if cfg.rescale_betas_zero_snr:
        # torch's float32 sqrt is not correctly rounded on every CPU (1 ulp with AVX-512); the
        # rescale divides by sqrt(alpha_bar) - sqrt(alpha_bar_T), so near t = N-1 that ulp grows.
        np.testing.assert_allclose(schedule.alphas_cumprod(cfg), ref.alphas_cumprod, rtol=1e-5)
    else:  # bit for bit
        np.testing.assert_array_equal(schedule.betas(cfg), ref.betas.numpy())
        np.testing.assert_array_equal(schedule.alphas_cumprod(cfg), ref.alphas_cumprod.numpy())
    assert (schedule.alphas_cumprod(cfg)[-1] == 0) == cfg.rescale_betas_zero_snr


@pytest.mark.parametrize("eta", [0.0, 0.7])
@pytest.mark.parametrize("steps", [40, 7])
@pytest.mark.parametrize("name", SETTINGS)
def test_ddim_matches_diffusers(name, steps, eta):
    cfg = SETTINGS[name]
    theirs = DDIMScheduler(**_kwargs(cfg, DDIM_KEYS))
    theirs.set_timesteps(steps)
    ours = ddim(cfg, steps, eta)
    np.testing.assert_array_equal(ours.timesteps, theirs.timesteps.numpy())
    np.testing.assert_allclose(ours.alpha**2, theirs.alphas_cumprod[theirs.timesteps], atol=2e-7)
    noises = _noise(steps, seed=3) if eta else None
    errors = _run_both(cfg, ours, theirs, noises, eta=eta)
    assert max(errors) < 1e-5, errors


@pytest.mark.parametrize(
    "name,steps,extra",
    [
        ("sd15", 40, {}),
        ("sd15", 10, {}),
        ("hallo", 40, {}),
        ("hallo", 12, {"use_karras_sigmas": True}),
        ("linspace", 20, {}),
        ("linspace", 12, {"final_sigmas_type": "sigma_min"}),
        ("linspace", 12, {"final_sigmas_type": "sigma_min", "lower_order_final": False}),
        ("sd15", 25, {"use_karras_sigmas": True}),
        ("sample_clipped", 15, {}),
    ],
)
def test_dpmpp_2m_matches_diffusers(name, steps, extra):
    cfg = dataclasses.replace(SETTINGS[name], **extra)
    theirs = DPMSolverMultistepScheduler(
        **_kwargs(cfg, DPM_KEYS), solver_order=2, algorithm_type="dpmsolver++"
    )
    theirs.set_timesteps(steps)
    ours = dpmpp_2m(cfg, steps)
    np.testing.assert_array_equal(ours.timesteps, theirs.timesteps.numpy())
    sig = theirs.sigmas[:-1].double()
    np.testing.assert_allclose(ours.alpha, 1 / (sig**2 + 1) ** 0.5, rtol=1e-6)
    errors = _run_both(cfg, ours, theirs)
    assert max(errors) < 1e-5, errors


def test_dpmpp_2m_orders():
    """Second order between a first-order first step and (final sigma zero) last step."""
    s = dpmpp_2m(DiffusionConfig(), 20)
    second = s.c_prev != 0
    assert not second[0] and not second[-1] and second[1:-1].all()
    assert s.c_x[-1] == 0 and s.c_x0[-1] == 1  # the last step returns x0
    short = dpmpp_2m(DiffusionConfig(final_sigmas_type="sigma_min", lower_order_final=False), 10)
    assert (short.c_prev[1:] != 0).all()


def test_add_noise_and_velocity_match_ddpm():
    for cfg in SETTINGS.values():
        ref = diffusers_scheduler(DDPMScheduler, cfg, SCHEDULE_KEYS)
        rng = np.random.default_rng(3)
        x0 = rng.standard_normal((5, 3, 4, 4, 4)).astype(np.float32)
        noise = rng.standard_normal(x0.shape).astype(np.float32)
        t = np.array([0, 1, 500, 998, 999])
        args = [torch.from_numpy(a) for a in (x0, noise, t)]
        ours = [jnp.asarray(a) for a in (x0, noise, t)]
        np.testing.assert_allclose(
            training.add_noise(cfg, *ours), ref.add_noise(*args).numpy(), atol=1e-6
        )
        np.testing.assert_allclose(
            training.velocity(cfg, *ours), ref.get_velocity(*args).numpy(), atol=1e-6
        )


def test_targets_and_loss():
    rng = np.random.default_rng(4)
    x0, noise, pred = (
        jnp.asarray(rng.standard_normal((3, 2, 4, 4, 4)), jnp.float32) for _ in "abc"
    )
    t = jnp.array([10, 400, 990])
    sd15 = DiffusionConfig()
    v_cfg = dataclasses.replace(sd15, prediction_type="v_prediction")
    assert training.target(sd15, x0, noise, t) is noise
    np.testing.assert_array_equal(
        training.target(v_cfg, x0, noise, t), training.velocity(v_cfg, x0, noise, t)
    )
    mse = ((pred - noise) ** 2).mean(axis=(1, 2, 3, 4))
    np.testing.assert_allclose(training.loss(sd15, pred, x0, noise, t), mse.mean(), rtol=1e-6)
    # min-SNR-5: weight min(snr, 5) / snr (epsilon) or / (snr + 1) (v).
    snr = schedule.snr(sd15)[np.asarray(t)]
    for cfg, w in [(sd15, np.minimum(snr, 5) / snr), (v_cfg, np.minimum(snr, 5) / (snr + 1))]:
        cfg = dataclasses.replace(cfg, snr_gamma=5.0)
        mse = ((pred - training.target(cfg, x0, noise, t)) ** 2).mean(axis=(1, 2, 3, 4))
        np.testing.assert_allclose(
            training.loss(cfg, pred, x0, noise, t), (mse * w).mean(), rtol=1e-5
        )
    assert not np.allclose(w, 1)
    ts = training.sample_timesteps(sd15, jax.random.key(0), 4096)
    assert ts.shape == (4096,) and int(ts.min()) == 0 and int(ts.max()) == 999


def test_config_section():
    cfg = load_config(None, ["diffusion.sampler=dpmpp_2m", "diffusion.num_inference_steps=25"])
    assert cfg.diffusion.beta_schedule == "scaled_linear" and cfg.diffusion.steps_offset == 1
    assert make_sampler(cfg.diffusion).num_steps == 25
    assert make_sampler(DiffusionConfig()).timesteps[:2].tolist() == [976, 951]
    with pytest.raises(ConfigError, match="diffusion.sampler"):
        load_config(None, ["diffusion.sampler=euler"])
