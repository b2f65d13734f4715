"""Synthetic corpus, video I/O, face detection and head-rotation maths (emo_jax.data)."""

import json

import numpy as np
import pytest
import soundfile as sf

from emo_jax.audio.io import load_audio
from emo_jax.data import synth, video
from emo_jax.errors import InputError
from emo_jax.faces import detect, pose, track


@pytest.fixture(scope="module")
def clip():
    return synth.render_clip(synth.make_identity(3), 4.0, 96, seed=1)


def test_render_is_deterministic_per_seed(clip):
    again = synth.render_clip(synth.make_identity(3), 4.0, 96, seed=1)
    other = synth.render_clip(synth.make_identity(3), 4.0, 96, seed=2)
    assert np.array_equal(clip.frames, again.frames)
    assert np.array_equal(clip.audio, again.audio)
    assert not np.array_equal(clip.audio, other.audio)
    assert synth.make_identity(3) != synth.make_identity(4)


def test_clip_shapes(clip):
    assert clip.frames.shape == (100, 96, 96, 3) and clip.frames.dtype == np.uint8
    assert clip.audio.shape == (100 * 640,) and clip.audio.dtype == np.float32
    assert clip.mouth.shape == clip.speed.shape == (100,)
    assert clip.angles.shape == (100, 3) and clip.boxes.shape == (100, 4)
    assert np.all(clip.boxes[:, 2:] > clip.boxes[:, :2])


def test_mouth_follows_the_audio_envelope(clip):
    rms = np.sqrt((clip.audio.reshape(100, 640) ** 2).mean(axis=1))
    assert 0 <= clip.mouth.min() and clip.mouth.max() <= 1
    assert (clip.mouth < 0.05).mean() > 0.1  # pauses: the mouth closes
    assert np.corrcoef(rms, clip.mouth)[0, 1] > 0.8


def test_head_turns_at_known_varying_speed(clip):
    assert np.allclose(clip.speed, pose.rotation_speed(clip.angles))
    assert np.ptp(clip.angles[:, 0]) > 2 and clip.speed.std() > 0.05
    assert np.all(np.abs(clip.angles) <= [24, 12, 10])


def test_rotation_angles_round_trip():
    for angles in ([10, -5, 3], [-20, 8, -9], [0, 0, 0]):
        assert np.allclose(pose.angles_of(pose.rotation(*angles)), angles)
    omegas = np.radians([[0, 1.0, 0]] * 10)  # 1 degree per frame about the vertical axis
    assert np.allclose(pose.integrate(omegas)[-1], [10, 0, 0], atol=1e-6)
    assert np.allclose(pose.speeds_from_omegas(omegas), 1.0)


def test_haar_finds_the_synthetic_faces(clip):
    detector = detect.make_detector("haar")
    found = [detector(f) for f in clip.frames[::4]]
    assert sum(b is not None for b in found) >= 0.9 * len(found)
    centres = np.array([(b[:2] + b[2:]) / 2 for b in found if b is not None])
    truth = ((clip.boxes[::4, :2] + clip.boxes[::4, 2:]) / 2)[[b is not None for b in found]]
    size = (clip.boxes[:, 2] - clip.boxes[:, 0]).mean()
    assert np.abs(centres - truth).max() < 0.2 * size


def test_track_and_crop():
    boxes = [np.array([10.0, 10, 30, 30]), None, np.array([14.0, 10, 34, 30])]
    filled = track.fill_track(boxes, smooth=0)
    assert np.allclose(filled[1], [12, 10, 32, 30])
    x0, y0, side = track.stable_crop(filled, 64, 48, scale=2.0)
    assert side == 40 and 0 <= x0 <= 64 - side and 0 <= y0 <= 48 - side
    assert x0 <= 10 and x0 + side >= 34 and y0 <= 10 and y0 + side >= 30
    assert track.box_iou(np.array([0, 0, 2, 2.0]), np.array([1, 0, 3, 2.0])) == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        track.fill_track([None, None])


def test_writer_reader_round_trip(tmp_path):
    frames = np.random.default_rng(0).integers(0, 255, (30, 48, 64, 3), dtype=np.uint8)
    audio = np.sin(np.arange(40000) / 16000 * 2 * np.pi * 220).astype(np.float32) * 0.5
    path = tmp_path / "out.mp4"
    with video.VideoWriter(path, audio=audio) as w:
        w.write(frames[:12])  # clip by clip
        w.write(frames[12:])
        assert not path.exists()  # appears only on close
    info = video.probe(path)
    assert (info.width, info.height, info.fps, info.has_audio) == (64, 48, 25.0, True)
    assert len(list(video.iter_frames(path))) == 30
    assert len(list(video.iter_frames(path, fps=10))) == 12
    assert next(video.iter_frames(path, size=(32, 24))).shape == (24, 32, 3)
    decoded = load_audio(path)
    assert abs(len(decoded) - 30 * 640) < 1100  # audio trimmed to the video's 1.2 s
    assert np.corrcoef(decoded[2000:18000], audio[2000:18000])[0, 1] > 0.99


def test_writer_leaves_nothing_on_error(tmp_path):
    with pytest.raises(RuntimeError):
        with video.VideoWriter(tmp_path / "x.mp4") as w:
            w.write(np.zeros((2, 32, 32, 3), np.uint8))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(InputError):
        video.VideoWriter(tmp_path / "odd.mp4").write(np.zeros((1, 33, 32, 3), np.uint8))


def test_not_a_video(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_text("hello")
    with pytest.raises(InputError, match="bad.mp4"):
        video.probe(bad)
    with pytest.raises(InputError, match="bad.mp4"):
        next(video.iter_frames(bad))


def test_write_clip_files(tmp_path):
    mp4 = synth.write_clip(tmp_path, "a", identity_seed=5, clip_seed=0, seconds=2.0, size=64)
    truth = json.loads((tmp_path / "a.json").read_text())
    assert truth["n_frames"] == 50 and len(truth["frames"]["box"]) == 50
    assert set(truth["frames"]) == {"mouth_open", "angles", "speed", "box"}
    wav, rate = sf.read(tmp_path / "a.wav", dtype="float32")
    assert rate == 16000 and len(wav) == 50 * 640
    assert len(list(video.iter_frames(mp4))) == 50
    muxed = load_audio(mp4)[: len(wav)]
    lag = np.argmax(np.correlate(muxed[4000:20000], wav[3900:20100], "valid")) - 100
    assert lag == 0 and np.corrcoef(muxed[4000:20000], wav[4000:20000])[0, 1] > 0.95
