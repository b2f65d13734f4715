"""emo_jax.data"""
