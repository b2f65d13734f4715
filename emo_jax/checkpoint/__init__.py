"""emo_jax.checkpoint"""
