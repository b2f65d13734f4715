"""emo_jax.pipeline"""
