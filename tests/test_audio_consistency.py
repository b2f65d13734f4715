"""One definition of the audio features: a training example's features (stored in the shards by
preprocessing, windowed by the loader) equal generation's (the whole track through
`AudioFeatures`) for the same frames, at the ends of a video too; they equal what the loader
computed before they were stored (an encoder over each example's slice); the shards name the
model.audio that made them."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from test_audio_features import save_tiny_wav2vec2

from emo_jax.audio.features import AudioFeatures, normalize, track_stats, window_frames
from emo_jax.cli import main
from emo_jax.config import AudioConfig, Config, DataConfig, EMOConfig, ModelConfig
from emo_jax.data import records
from emo_jax.data.pipeline import make_loader
from emo_jax.data.preprocess import write_features
from emo_jax.errors import InputError
from emo_jax.files import write_json

SPF, N_VIDEO = 640, 30
TINY = str(Path(__file__).resolve().parents[1] / "configs/train/tiny.yaml")  # mel, 80 bins
MEL = AudioConfig(encoder="mel", n_mels=16)


def _track() -> np.ndarray:
    """Speech-like audio whose loudness and offset change along the track, so that any
    normalisation over a slice differs from the track's; as the records hold it (int16)."""
    rng = np.random.default_rng(0)
    t = np.arange(N_VIDEO * SPF) / 16000
    tone = np.sin(2 * np.pi * (150 + 100 * np.sin(2 * np.pi * 3 * t)) * t)
    loud = 0.1 + 0.4 * (t > 0.5) * (t < 0.9)
    wave = loud * tone + 0.05 * t + 0.01 * rng.standard_normal(len(t))
    return records.dequantize(records.quantize(wave))


def _corpus(root, wave: np.ndarray, audio: AudioConfig | None, dtype: str = "float32") -> None:
    """A one-video corpus (flat grey frames, this audio) as preprocessing writes it, with
    `audio`'s features (None: as written before features were stored)."""
    jpeg = records.encode_jpeg(np.full((16, 16, 3), 128, np.uint8), 90)
    box, chunk = np.array([2, 2, 12, 12]), lambda k: wave[k * SPF : (k + 1) * SPF]  # noqa: E731
    recs = (
        records.encode_frame(jpeg, chunk(k), box, 0.0, np.zeros(3), "v", k, None)
        for k in range(N_VIDEO)
    )
    records.write_shard(root / "v.array_record", recs)
    videos = [{"id": "v", "shard": "v.array_record", "n_frames": N_VIDEO}]
    manifest = {"videos": videos, "settings": {"resolution": 16}, "samples_per_frame": SPF}
    if audio is not None:
        write_features(root / "v.array_record", audio, dtype)
        manifest["audio_features"] = records.audio_spec(audio)
    write_json(manifest, root / "manifest.json")


def _cfg(root, audio: AudioConfig, n_motion: int = 4, mode: str = "video") -> Config:
    model = ModelConfig(audio=audio, emo=EMOConfig(n_motion_frames=n_motion))
    data = DataConfig(shards=str(root), resolution=16, batch_size=1, shuffle=False, mode=mode)
    return Config(model=model, data=dataclasses.replace(data, num_epochs=1))


def _old_loader_features(track: np.ndarray, audio: AudioConfig, t0: int, f: int) -> np.ndarray:
    """What the loader computed before the features were stored (its AudioWindows): the
    encoder over the clip's audio slice inside the video, frames [t0 - c, t0 + f + c) with
    c = m + p (p: the encoder's margin), normalised with the track's statistics, the ends
    repeated, windowed."""
    m, n = audio.window, len(track) // SPF
    c = m + -(-(audio.mel_n_fft + audio.mel_hop) // SPF)
    a, b = max(0, t0 - c), min(n, t0 + f + c)
    piece = normalize(track[a * SPF : b * SPF], track_stats(track))
    frames = np.concatenate(list(AudioFeatures(audio).iter_frames(piece)))  # (b - a, L, D)
    frames = frames[np.clip(np.arange(t0 - c, t0 + f + c), a, b - 1) - a]
    return window_frames(frames, m)[c : c + f]


@pytest.mark.parametrize("n_motion", [4, 1])  # 1 < m: the first clip's audio starts before 0
def test_training_features_equal_generation_features(tmp_path, n_motion):
    track = _track()
    _corpus(tmp_path, track, MEL)
    cfg = _cfg(tmp_path, MEL, n_motion)
    generation = AudioFeatures(MEL)(track)  # what EMOPipeline.prepare computes
    f = cfg.model.emo.n_frames
    batches = list(make_loader(cfg, 0, 1))
    assert len(batches) == N_VIDEO - n_motion - f + 1  # every clip, the last ends the video
    for start, batch in enumerate(batches):
        t0 = start + n_motion
        got = batch["audio"][0]
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, generation[t0 : t0 + f])  # bit-exact
        old = _old_loader_features(track, MEL, t0, f)  # the loader's before they were stored
        np.testing.assert_array_equal(got, old)  # bit-exact too (mel is local)


def test_wav2vec2_features_equal_generation_features(tmp_path):
    save_tiny_wav2vec2(tmp_path / "w2v")
    audio = AudioConfig(encoder="wav2vec2", wav2vec2_path=str(tmp_path / "w2v"))
    track = _track()
    _corpus(tmp_path, track, audio)
    generation = AudioFeatures(audio)(track)
    batches = list(make_loader(_cfg(tmp_path, audio, n_motion=1), 0, 1))
    for t0 in (1, 10, N_VIDEO - 12):  # the start, the middle, the end of the video
        np.testing.assert_array_equal(batches[t0 - 1]["audio"][0], generation[t0 : t0 + 12])


def test_float16_features_within_rounding(tmp_path):
    track = _track()
    _corpus(tmp_path / "32", track, MEL)
    _corpus(tmp_path / "16", track, MEL, "float16")
    (full,), (half,) = (
        next(iter(make_loader(_cfg(tmp_path / d, MEL), 0, 1)))["audio"] for d in ("32", "16")
    )
    assert half.dtype == np.float32 and not np.array_equal(half, full)
    # float16 rounds to nearest: relative error <= 2^-11 (log-mel values here are in [-12, 5])
    assert np.all(np.abs(half - full) <= 2.0**-11 * np.abs(full))


def test_other_audio_config_and_old_shards_are_one_line_errors(tmp_path, capsys):
    track = _track()
    _corpus(tmp_path / "new", track, MEL)
    _corpus(tmp_path / "old", track, None)
    other = dataclasses.replace(MEL, n_mels=20)
    with pytest.raises(InputError) as e:
        make_loader(_cfg(tmp_path / "new", other), 0, 1)
    assert str(e.value) == (
        f"{tmp_path}/new/manifest.json: the shards' audio features were made with model.audio "
        "n_mels=16; this config has n_mels=20: re-run `emo-jax preprocess --out "
        f"{tmp_path}/new` with this config (it rewrites only the features)"
    )
    with pytest.raises(InputError, match=r"old/manifest.json: the shards hold no audio features"):
        make_loader(_cfg(tmp_path / "old", MEL), 0, 1)
    # `emo-jax train`: the same line, exit 2, before anything compiles or is written
    run = ["train.out_dir=" + str(tmp_path / "run"), "data.resolution=16"]
    assert (
        main(["train", "--config", TINY, "--stage", "2", f"data.shards={tmp_path}/new", *run]) == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "n_mels=16; this config has n_mels=80: re-run" in err[0]
    assert not (tmp_path / "run").exists()
    # no audio needed: old shards and another audio config serve stage 1
    assert next(iter(make_loader(_cfg(tmp_path / "old", other, mode="image"), 0, 1)))
    no_audio = dataclasses.replace(_cfg(tmp_path / "old", MEL), model=ModelConfig(
        audio=MEL, emo=EMOConfig(use_audio=False)))  # fmt: skip
    assert "audio" not in next(iter(make_loader(no_audio, 0, 1)))
