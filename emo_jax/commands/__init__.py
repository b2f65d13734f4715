"""CLI sub-commands, one module each (registered in emo_jax.cli)."""
