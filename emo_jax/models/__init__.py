"""emo_jax.models"""
