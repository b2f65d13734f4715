"""The Grain pipeline that feeds training: shuffled, repeated, batched, sharded per JAX process,
with a checkpointable iterator (`it.get_state()` / `it.set_state(state)`, or Orbax through
`grain.checkpoint.CheckpointSave/CheckpointRestore`).

Batches (B = data.batch_size / process_count, S = data.resolution; F = n_frames,
n = n_motion_frames, m = audio_context: the model's, `clip_spec`; L, D: the features' layers
and width, `emo_jax.models.emo.audio_feature_shape`):

mode "video" (stages 2 and 3):
  "frames"         (B, F, S, S, 3) uint8 RGB   target frames (x / 127.5 - 1 gives [-1, 1])
  "motion_frames"  (B, n, S, S, 3) uint8 RGB   the n frames just before the targets
  "reference"      (B, S, S, 3)    uint8 RGB   a random other frame of the same video
  "audio"          (B, F, 2m+1, L, D) float32  the target frames' audio feature windows, read
                                               from the shards (only if model.emo.use_audio):
                                               equal to generation's for the same frames
  "mask"           (B, S, S) float32 0/1       union of the target frames' face boxes
  "speed"          (B, F) float32              head rotation speed, degrees per frame
mode "image" (stage 1): "frames" (B, 1, S, S, 3), "reference" and "mask" as above.

The paper describes no augmentation; `data.hue_augment` > 0 turns the hues of that fraction of
examples (`rotate_hue`: every frame and the reference alike, luminance kept), so that the model
has to copy colours from the reference rather than learn the training people's.
"""

from __future__ import annotations

import grain
import numpy as np

from emo_jax.config import ClipSpec, Config, DataConfig, clip_spec
from emo_jax.data.source import ClipIndex, Corpus, FrameReader
from emo_jax.errors import InputError

YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def rotate_hue(images: np.ndarray, angle: float) -> np.ndarray:
    """uint8 RGB images (..., 3) with their hue turned by `angle` radians: a rotation of the
    YIQ chroma plane, so luminance (a dark mouth, grey teeth) is kept."""
    c, s = np.cos(angle), np.sin(angle)
    turn = np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])
    matrix = np.linalg.inv(YIQ) @ turn @ YIQ
    out = images.astype(np.float32) @ matrix.T.astype(np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


class LoadExample(grain.transforms.RandomMap):
    """Clip position -> training example (the reference frame is the random part)."""

    def __init__(self, reader: FrameReader, cfg: DataConfig, clip: ClipSpec, audio: bool):
        self.reader = reader
        self.cfg = cfg
        self.clip = clip
        self.window = clip.audio_context if audio else None

    def random_map(self, element: dict, rng: np.random.Generator) -> dict:
        video, start = int(element["video"]), int(element["start"])
        cfg, clip, reader = self.cfg, self.clip, self.reader
        if cfg.mode == "image":
            rec = reader.read(video, range(start, start + 1))
            example = {
                "frames": reader.image(rec[0])[None],
                "reference": reader.reference(video, range(start, start + 1), rng),
                "mask": reader.mask(rec),
            }
        else:
            example = reader.clip(
                video,
                start,
                clip.n_motion_frames,
                clip.n_frames,
                self.window,
            )
            t0 = start + clip.n_motion_frames
            example["reference"] = reader.reference(video, range(t0, t0 + clip.n_frames), rng)
        if cfg.hue_augment and rng.random() < cfg.hue_augment:
            angle = rng.uniform(0.0, 2 * np.pi)
            for key in ("frames", "motion_frames", "reference"):
                if key in example:
                    example[key] = rotate_hue(example[key], angle)
        return example


def _parse_absl_flags() -> None:
    """Grain reads absl flags; outside an absl app they must be marked parsed once."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def make_loader(
    config: Config,
    process_index: int | None = None,
    process_count: int | None = None,
) -> grain.DataLoader:
    """The training DataLoader of `config.data`, its clips as `config.model` needs them
    (process index / count default to JAX's); with audio, the shards' features must be
    `config.model.audio`'s (an InputError otherwise).

    With `cfg.worker_count > 0` Grain spawns worker processes: call this under
    `if __name__ == "__main__":` in scripts.
    """
    _parse_absl_flags()
    cfg, clip = config.data, clip_spec(config.model)
    if process_index is None or process_count is None:
        import jax

        process_index, process_count = jax.process_index(), jax.process_count()
    if cfg.batch_size % process_count:
        raise InputError(
            f"data.batch_size {cfg.batch_size} is not divisible by the {process_count} processes"
        )
    corpus = Corpus.load(cfg.shards)
    audio = cfg.mode == "video" and config.model.emo.use_audio
    if audio:
        corpus.check_audio(config.model.audio)
    length = 1 if cfg.mode == "image" else clip.n_motion_frames + clip.n_frames
    index = ClipIndex(corpus, length, 1 if cfg.mode == "image" else cfg.clip_stride)
    shard = grain.sharding.ShardOptions(process_index, process_count, drop_remainder=True)
    sampler = grain.samplers.IndexSampler(
        num_records=len(index),
        shard_options=shard,
        shuffle=cfg.shuffle,
        num_epochs=cfg.num_epochs,
        seed=cfg.seed,
    )
    operations = [
        LoadExample(FrameReader(corpus, cfg.resolution), cfg, clip, audio),
        grain.transforms.Batch(cfg.batch_size // process_count, drop_remainder=True),
    ]
    return grain.DataLoader(
        data_source=index,
        sampler=sampler,
        operations=operations,
        worker_count=cfg.worker_count,
        worker_buffer_size=cfg.worker_buffer_size,
        read_options=grain.ReadOptions(num_threads=1, prefetch_buffer_size=64),
    )
