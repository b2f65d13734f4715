"""Bad input to `emo-jax generate` beyond tests/test_bad_inputs.py's table: the example-input
notice, a mask for a faceless portrait, a checkpoint whose params do not fit (found when the
weights are read, after the inputs), and a failure mid-video: exit code 2 or the error, one
clear line, nothing left at --out."""

import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from emo_jax.checkpoint.bundle import save_bundle
from emo_jax.cli import main
from emo_jax.pipeline import EMOPipeline, RandomWeightsWarning
from emo_jax.pipeline.loading import TINY_CONFIG

ASSETS = Path(__file__).resolve().parents[1] / "emo_jax" / "assets"
IMAGE, AUDIO = str(ASSETS / "portrait.png"), str(ASSETS / "speech.wav")


def run_bad_stderr(capsys, tmp_path: Path, *args: str) -> list[str]:
    """Runs generate with `args`; checks exit 2, one error line, no traceback, no files; returns
    its stderr lines."""
    out = tmp_path / "out"
    out.mkdir()
    code = main(["generate", "--out", str(out / "video.mp4"), "--resolution", "64", *args])
    err = capsys.readouterr().err
    assert code == 2, err
    errors = [line for line in err.splitlines() if line.startswith("emo-jax generate: error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert list(out.iterdir()) == []
    return err.splitlines()


def run_bad(capsys, tmp_path: Path, *args: str) -> str:
    """run_bad_stderr's error line."""
    lines = run_bad_stderr(capsys, tmp_path, *args)
    return next(x for x in lines if x.startswith("emo-jax generate: error:"))


@pytest.fixture
def noise_image(tmp_path) -> Path:
    path = tmp_path / "noise.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (96, 160, 3), np.uint8)).save(path)
    return path


def test_missing_image_with_the_example_audio(capsys, tmp_path):
    err = run_bad_stderr(capsys, tmp_path, "--image", str(tmp_path / "nope.png"))
    assert err[0] == f"emo-jax generate: using the example audio {ASSETS / 'speech.wav'}"
    assert err[1:] == [f"emo-jax generate: error: {tmp_path / 'nope.png'}: image file not found"]


def test_face_index_out_of_range(capsys, tmp_path):
    line = run_bad(capsys, tmp_path, "--image", IMAGE, "--audio", AUDIO, "--face", "3")
    assert "--face 3: 1 face(s) found, numbered 0 to 0" in line


def test_mask_lets_a_faceless_portrait_through(tmp_path, noise_image):
    mask = np.zeros((96, 160), np.uint8)
    mask[20:60, 70:110] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        pipe = EMOPipeline.from_pretrained(None, TINY_CONFIG)
    job = pipe.prepare(noise_image, AUDIO, mask=tmp_path / "mask.png", resolution=64)
    assert job.reference.face_box is None and job.reference.crop == (32, 0, 96)
    expected = np.zeros((64, 64), np.float32)
    expected[13:40, 25:52] = 1  # (20..60, 38..78) in the 96 px centre crop, scaled by 2/3
    assert np.abs(job.reference.mask - expected).sum() <= 64 * 2  # edge rows / columns


def test_checkpoint_that_does_not_fit(capsys, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        pipe = EMOPipeline.from_pretrained(None, TINY_CONFIG)
    params = pipe.model.params
    emo = dict(params["emo"])
    emo.pop("speed_encoder")
    emo["face_locator"] = {**emo["face_locator"]}
    block = emo["face_locator"]["blocks_0"]
    emo["face_locator"]["blocks_0"] = {**block, "bias": np.zeros(3, np.float32)}
    save_bundle(tmp_path / "bundle", pipe.config, {"emo": emo, "vae": params["vae"]})
    line = run_bad(capsys, tmp_path, "--checkpoint", str(tmp_path / "bundle"))
    assert "the params do not fit the config" in line
    assert "missing key(s): emo/speed_encoder/linear_1/bias" in line
    assert "emo/face_locator/blocks_0/bias (3,) != expected (8,)" in line


def test_failure_mid_video_leaves_nothing(tmp_path, monkeypatch):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        pipe = EMOPipeline.from_pretrained(None, TINY_CONFIG)
    calls = []
    decode = EMOPipeline._decode

    def failing(*args):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("disk on fire")
        return decode(*args)

    monkeypatch.setattr(EMOPipeline, "_decode", staticmethod(failing))
    with pytest.raises(RuntimeError, match="disk on fire"):
        pipe(
            IMAGE, AUDIO, out=tmp_path / "v.mp4", frames_dir=tmp_path / "f", resolution=64, steps=1
        )
    assert list(tmp_path.iterdir()) == []
