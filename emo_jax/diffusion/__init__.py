"""emo_jax.diffusion: noise schedule, training loss, DDIM / DPM-Solver++ 2M samplers, guidance."""
