"""Shared test set-up: quiet PyTorch references, a persistent JAX compilation cache."""

import os
import tempfile

os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# Through the environment, so that the commands the tests run in child processes (README
# blocks, the CLI, training runs) share the compiled programs too.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "emo_jax_jit_cache")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
