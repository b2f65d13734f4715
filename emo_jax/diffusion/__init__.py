"""emo_jax.diffusion"""
