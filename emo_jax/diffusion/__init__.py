"""emo_jax.diffusion: noise schedule, training loss, DDIM / DPM-Solver++ 2M samplers, guidance."""

from emo_jax.diffusion.guidance import Guidance, guided
from emo_jax.diffusion.samplers import Sampler, SamplerState, init_state, make_sampler, sample, step
from emo_jax.diffusion.training import add_noise, loss, sample_timesteps, target, velocity

__all__ = [
    "Guidance",
    "Sampler",
    "SamplerState",
    "add_noise",
    "guided",
    "init_state",
    "loss",
    "make_sampler",
    "sample",
    "sample_timesteps",
    "step",
    "target",
    "velocity",
]
