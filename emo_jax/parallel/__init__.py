"""emo_jax.parallel"""
