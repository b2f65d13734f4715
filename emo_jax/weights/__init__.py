"""emo_jax.weights: PyTorch-format weight files (safetensors, pickles, diffusers and
transformers folders) and the one rule table between their key names and Flax param trees."""
