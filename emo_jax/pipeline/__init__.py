"""emo_jax.pipeline: inference. `EMOPipeline.from_pretrained(path or None)(image, audio)`."""

from emo_jax.pipeline.loading import RandomWeightsWarning, resolve_checkpoint
from emo_jax.pipeline.pipeline import Clip, EMOOutput, EMOPipeline, Options

__all__ = [
    "Clip",
    "EMOOutput",
    "EMOPipeline",
    "Options",
    "RandomWeightsWarning",
    "resolve_checkpoint",
]
