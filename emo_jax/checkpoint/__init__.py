"""emo_jax.checkpoint: Orbax state: training-run checkpoints and model bundles."""
