"""emo_jax.nn"""
