"""One definition of the audio features: a training example's features equal generation's
(the whole track through `AudioFeatures`) for the same frames, at the ends of a video too."""

import dataclasses

import numpy as np
import pytest

from emo_jax.audio.features import AudioFeatures
from emo_jax.config import AudioConfig, Config, DataConfig, EMOConfig, ModelConfig
from emo_jax.data import records
from emo_jax.data.pipeline import make_loader
from emo_jax.files import write_json
from emo_jax.train.data import AudioWindows, prepare

SPF, N_VIDEO = 640, 30


def _track() -> np.ndarray:
    """Speech-like audio whose loudness and offset change along the track, so that any
    normalisation over a slice differs from the track's."""
    rng = np.random.default_rng(0)
    t = np.arange(N_VIDEO * SPF) / 16000
    tone = np.sin(2 * np.pi * (150 + 100 * np.sin(2 * np.pi * 3 * t)) * t)
    loud = 0.1 + 0.4 * (t > 0.5) * (t < 0.9)
    return (loud * tone + 0.05 * t + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


def _corpus(root, wave: np.ndarray) -> None:
    """A one-video corpus written directly (flat grey frames, this audio)."""
    jpeg = records.encode_jpeg(np.full((16, 16, 3), 128, np.uint8), 90)
    recs = (
        records.encode_frame(
            jpeg, wave[k * SPF : (k + 1) * SPF], np.array([2, 2, 12, 12]), 0.0, np.zeros(3), "v", k
        )
        for k in range(N_VIDEO)
    )
    records.write_shard(root / "v.array_record", recs)
    videos = [{"id": "v", "shard": "v.array_record", "n_frames": N_VIDEO}]
    manifest = {"videos": videos, "settings": {"resolution": 16}, "samples_per_frame": SPF}
    write_json(manifest, root / "manifest.json")


@pytest.mark.parametrize("n_motion", [4, 1])  # 1 < m: the first clip's audio starts before 0
def test_training_features_equal_generation_features(tmp_path, n_motion):
    wave = _track()
    _corpus(tmp_path, wave)
    model = ModelConfig(
        audio=AudioConfig(encoder="mel", n_mels=16), emo=EMOConfig(n_motion_frames=n_motion)
    )
    data = DataConfig(shards=str(tmp_path), resolution=16, batch_size=1, shuffle=False)
    cfg = Config(model=model, data=dataclasses.replace(data, num_epochs=1))
    track = np.concatenate([records.decode_frame(r)["audio"] for r in records.read_shard(
        tmp_path / "v.array_record")])  # fmt: skip
    generation = AudioFeatures(model.audio)(track)  # what EMOPipeline.prepare computes
    f = model.emo.n_frames
    windows = AudioWindows(cfg)
    batches = list(make_loader(cfg, 0, 1))
    assert len(batches) == N_VIDEO - n_motion - f + 1  # every clip, the last ends the video
    for start, batch in enumerate(batches):
        t0 = start + n_motion
        got = prepare(batch, windows)["audio"][0]
        np.testing.assert_allclose(got, generation[t0 : t0 + f], rtol=1e-5, atol=1e-5)
