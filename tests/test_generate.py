"""`emo-jax generate` and EMOPipeline end to end at the tiny config with random weights (64 px,
2 steps): the mp4 (frames, size, fps, audio), determinism by seed, CLI == API, the motion-frame
handoff between clips, and the progress callback."""

import warnings
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile
from PIL import Image

from emo_jax.cli import main
from emo_jax.pipeline import EMOPipeline, RandomWeightsWarning
from emo_jax.pipeline.loading import TINY_CONFIG

ASSETS = Path(__file__).resolve().parents[1] / "emo_jax" / "assets"
OPTIONS = dict(resolution=64, steps=2)  # 8x8 latents; clips of f = 8 with n = 4 motion frames
CLI_OPTIONS = ["--resolution", "64", "--steps", "2"]


@pytest.fixture(scope="module")
def pipe():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        return EMOPipeline.from_pretrained(None, TINY_CONFIG)


@pytest.fixture(scope="module")
def speech_2s(tmp_path_factory) -> Path:
    """The first 2 s of the shipped sentence as 44.1 kHz stereo (any rate / channels work)."""
    import librosa

    wave, rate = soundfile.read(ASSETS / "speech.wav", dtype="float32")
    wave = librosa.resample(wave[: 2 * rate], orig_sr=rate, target_sr=44100)
    path = tmp_path_factory.mktemp("audio") / "speech_2s.wav"
    soundfile.write(path, np.stack([wave, 0.5 * wave], axis=1), 44100)
    return path


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, speech_2s):
    out = tmp_path_factory.mktemp("cli")
    code = main(
        ["generate", "--image", str(ASSETS / "portrait.png"), "--audio", str(speech_2s)]
        + ["--out", str(out / "video.mp4"), "--frames-dir", str(out / "frames"), "--seed", "3"]
        + ["--config", str(TINY_CONFIG)]
        + CLI_OPTIONS
    )
    return code, out


@pytest.fixture(scope="module")
def api_frames(pipe, speech_2s):
    return pipe(ASSETS / "portrait.png", speech_2s, seed=3, **OPTIONS).frames


def test_cli_writes_the_mp4(cli_run):
    code, out = cli_run
    assert code == 0
    with av.open(str(out / "video.mp4")) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert video.codec_context.name == "h264" and audio.codec_context.name == "aac"
        assert (video.codec_context.width, video.codec_context.height) == (64, 64)
        assert video.average_rate == 25
        frames = sum(1 for _ in container.decode(video))
        assert frames == 50  # 2 s at 25 fps: the audio's frame count, last clip trimmed
    with av.open(str(out / "video.mp4")) as container:
        samples = sum(f.samples for f in container.decode(audio=0))
        rate = container.streams.audio[0].rate
    assert rate == 16000
    assert abs(samples / rate - 2.0) < 0.07  # within one AAC frame of 2 s
    assert sorted(p.name for p in out.iterdir()) == ["frames", "video.mp4"]  # no temp files
    assert len(list((out / "frames").iterdir())) == 50


def test_api_equals_cli(cli_run, api_frames):
    _, out = cli_run
    pngs = np.stack([np.asarray(Image.open(p)) for p in sorted((out / "frames").iterdir())])
    assert api_frames.shape == (50, 64, 64, 3) and api_frames.dtype == np.uint8
    np.testing.assert_array_equal(pngs, api_frames)


def test_same_seed_same_video_other_seed_other_video(pipe, speech_2s, api_frames):
    again = pipe(ASSETS / "portrait.png", speech_2s, seed=3, **OPTIONS).frames
    np.testing.assert_array_equal(again, api_frames)
    other = pipe(ASSETS / "portrait.png", speech_2s, seed=4, **OPTIONS).frames
    assert np.abs(other.astype(int) - api_frames).mean() > 1


def test_motion_frames_are_the_last_frames_of_the_previous_clip(pipe, speech_2s, api_frames):
    job = pipe.prepare(ASSETS / "portrait.png", speech_2s, seed=3, **OPTIONS)
    clips = list(pipe.iter_clips(job))
    assert [len(c.frames) for c in clips] == [8] * 6 + [2]  # 50 frames: last clip trimmed
    assert clips[0].motion_frames is None and clips[0].motion_latents is None
    for prev, clip in zip(clips, clips[1:]):
        np.testing.assert_array_equal(clip.motion_frames, prev.frames[-4:])
        assert clip.motion_latents.shape == (1, 4, 8, 8, 4)
    fns = pipe.functions(job)
    first = np.asarray(fns.encode(pipe.model.params["vae"], clips[1].motion_frames[:1]))
    np.testing.assert_array_equal(clips[1].motion_latents[:, 0], first)
    np.testing.assert_array_equal(np.concatenate([c.frames for c in clips]), api_frames)


def test_progress_reports_every_step_of_every_clip(pipe):
    calls = []
    wave = np.zeros(16000 // 2, np.float32)
    wave[::50] = 0.5  # 0.5 s, not silent: 13 frames, 2 clips
    out = pipe(
        ASSETS / "portrait.png",
        (wave, 16000),
        progress=lambda *a: calls.append(a),
        return_frames=False,
        **OPTIONS,
    )
    assert out.frames is None and out.num_frames == 13
    assert calls == [(k, 2, s, 2) for k in range(2) for s in (1, 2)]


@pytest.mark.parametrize("kind", ["bundle", "export"])
def test_saved_models_generate_the_same_video(pipe, tmp_path, kind):
    from emo_jax.checkpoint.bundle import save_bundle
    from emo_jax.interop.export import export_model

    save = save_bundle if kind == "bundle" else export_model
    save(tmp_path / kind, pipe.config, pipe.model.params)
    loaded = EMOPipeline.from_pretrained(tmp_path / kind)
    assert not loaded.random_weights and pipe.random_weights
    wave = (0.5 * np.sin(np.arange(8000) / 7)).astype(np.float32)
    a = pipe(ASSETS / "portrait.png", wave, 16000, **OPTIONS).frames
    b = loaded(ASSETS / "portrait.png", wave, 16000, **OPTIONS).frames
    np.testing.assert_array_equal(a, b)
