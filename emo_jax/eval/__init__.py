"""emo_jax.eval"""
