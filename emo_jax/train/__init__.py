"""emo_jax.train"""
