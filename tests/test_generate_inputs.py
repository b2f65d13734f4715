"""Generation inputs without the model: portrait crop and face mask, audio of any rate and
channel count, head-speed curves."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from emo_jax.errors import InputError
from emo_jax.pipeline.inputs import (
    box_mask,
    prepare_reference,
    read_audio,
    read_image,
    speed_per_frame,
)

ASSETS = Path(__file__).resolve().parents[1] / "emo_jax" / "assets"


@pytest.fixture(scope="module")
def portrait() -> np.ndarray:
    return np.asarray(Image.open(ASSETS / "portrait.png").convert("RGB"))


def test_wide_image_is_cropped_around_the_face(portrait):
    canvas = np.full((400, 900, 3), 200, np.uint8)
    canvas[100:356, 550:806] = portrait  # the portrait off-centre on a wide grey background
    ref = prepare_reference(canvas, 128)
    x0, y0, side = ref.crop
    assert ref.image.shape == (128, 128, 3) and ref.image.dtype == np.uint8
    face = ref.face_box
    centre = (face[:2] + face[2:]) / 2
    np.testing.assert_allclose(centre, [64, 64], atol=2)  # the face is centred
    assert 1.9 < 128 / max(face[2:] - face[:2]) < 2.1  # crop = 2 x the face (data.crop_scale)
    assert 550 <= x0 and x0 + side <= 806 + 40


def test_face_mask_is_the_enlarged_box():
    mask = box_mask(np.array([20.0, 30.0, 40.0, 60.0]), 64, 1.2)
    ys, xs = np.nonzero(mask)
    assert (xs.min(), xs.max() + 1, ys.min(), ys.max() + 1) == (18, 42, 27, 63)
    assert set(np.unique(mask)) == {0.0, 1.0}


def test_image_kinds(portrait):
    rgba = Image.fromarray(portrait).convert("RGBA")
    np.testing.assert_array_equal(read_image(rgba), portrait)
    grey = read_image(portrait[..., 0])
    assert grey.shape == (256, 256, 3) and np.all(grey[..., 0] == grey[..., 2])
    with pytest.raises(InputError, match="expected a uint8 array"):
        read_image(portrait.astype(np.float32))


def test_audio_any_rate_and_channels():
    t = np.arange(8000) / 8000
    tone = np.sin(2 * np.pi * 220 * t)
    stereo = (np.stack([tone, tone], axis=1) * 16000).astype(np.int16)  # (N, 2) int16 at 8 kHz
    wave, name = read_audio(stereo, 8000, 16000)
    assert name == "waveform" and wave.dtype == np.float32 and len(wave) == 16000
    assert abs(np.abs(wave).max() - 16000 / 32768) < 0.02
    planar, _ = read_audio((np.stack([tone, -tone]).astype(np.float32), 16000), None, 16000)
    assert planar.shape == (8000,) and np.abs(planar).max() < 1e-6  # (C, N): channels averaged
    with pytest.raises(InputError, match="sample rate"):
        read_audio(tone, None, 16000)


def test_speed_constant_curve_and_file(tmp_path):
    np.testing.assert_array_equal(speed_per_frame(0.7, 3, 25), np.float32([0.7] * 3))
    curve = speed_per_frame([0.0, 1.0], 60, 25)  # value i at i seconds, held after the end
    assert curve[0] == 0 and curve[25] == 1 and curve[59] == 1
    np.testing.assert_allclose(curve[10], 0.4, atol=1e-6)
    (tmp_path / "speed.txt").write_text("# degrees per frame\n0.2\n\n1.2  # singing\n")
    np.testing.assert_allclose(speed_per_frame(tmp_path / "speed.txt", 26, 25)[[0, 25]], [0.2, 1.2])
    with pytest.raises(InputError, match=">= 0"):
        speed_per_frame(-1.0, 3, 25)


def test_clip_audio_is_the_whole_tracks_windows_clip_by_clip():
    """`Job.clip_audio` (encoder chunks of 0.3 s, not a whole number of clips) = the windows of
    one pass over the whole track, cut into clips of f = 8; the last clip padded with the last
    frame's window."""
    import dataclasses

    from emo_jax.audio.features import AudioFeatures, normalize, window_frames
    from emo_jax.config import load_config
    from emo_jax.pipeline.loading import TINY_CONFIG
    from emo_jax.pipeline.pipeline import Job

    config = load_config(TINY_CONFIG)
    audio_cfg = config.model.audio
    wave = np.random.default_rng(0).normal(size=int(2.1 * audio_cfg.sample_rate))
    wave = wave.astype(np.float32)
    chunked = AudioFeatures(dataclasses.replace(audio_cfg, chunk_seconds=0.3))
    one_pass = AudioFeatures(dataclasses.replace(audio_cfg, chunk_seconds=100.0))
    frames = np.concatenate(list(one_pass.iter_frames(normalize(wave))))
    want = window_frames(frames, audio_cfg.window)  # (53, 2m+1, layers, dim)
    job = Job(config, None, None, wave, normalize(wave), chunked, np.zeros(len(want)), 25, None)
    clips = list(job.clip_audio())
    assert len(want) == 53 and job.num_clips == 7 and len(clips) == 7
    assert all(c.shape == (1, 8, *want.shape[1:]) for c in clips)
    got = np.concatenate([c[0] for c in clips])
    np.testing.assert_allclose(got[:53], want, atol=1e-5 * np.abs(want).max())
    np.testing.assert_array_equal(got[53:], np.repeat(got[52:53], 3, axis=0))
