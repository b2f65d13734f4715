"""emo_jax: EMO (Emote Portrait Alive) in JAX/Flax. `from emo_jax import EMOPipeline`."""

from typing import Any

__version__ = "0.1.0"
__all__ = ["EMOPipeline"]


def __getattr__(name: str) -> Any:
    """`EMOPipeline`, imported on first use: `import emo_jax` (and so `emo-jax --help`) does
    not load JAX."""
    if name == "EMOPipeline":
        from emo_jax.pipeline import EMOPipeline

        return EMOPipeline
    raise AttributeError(f"module 'emo_jax' has no attribute {name!r}")
