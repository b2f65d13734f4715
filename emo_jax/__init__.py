"""emo_jax: EMO (Emote Portrait Alive) in JAX/Flax."""

__version__ = "0.1.0"
