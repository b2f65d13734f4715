"""emo_jax.interop: PyTorch interop built on the models: what a weights path holds and its
conversion, original (non-diffusers) layouts, published parts loaded into EMO, the exported
model folder and the PyTorch twin that runs it."""
