"""Shared test set-up: quiet PyTorch references, a persistent JAX compilation cache."""

import os
import tempfile

os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402

jax.config.update(
    "jax_compilation_cache_dir", os.path.join(tempfile.gettempdir(), "emo_jax_jit_cache")
)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
