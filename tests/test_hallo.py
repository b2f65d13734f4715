"""Hallo (fudan-generative-vision/hallo) through emo_jax: every output recorded in a Hallo
fixture folder (tests/fixtures/hallo-tiny, or the `:`-separated folders in EMO_HALLO_FIXTURES)
reproduced from its `net.pth` within 1e-4 relative, float32."""

import os
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from emo_jax.audio.features import window_frames
from emo_jax.checkpoint import hallo
from emo_jax.models.hallo import apply_part

HERE = Path(__file__).parent
FOLDERS = [
    Path(p)
    for p in os.environ.get("EMO_HALLO_FIXTURES", str(HERE / "fixtures" / "hallo-tiny")).split(":")
    if p
]
RTOL = 1e-4


class Fixture:
    """One fixture folder: its recorded arrays and the converted model (built once)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.io = dict(np.load(folder / "io.npz"))
        self.model = hallo.read(folder / "net.pth")


_CACHE: dict[Path, Fixture] = {}


@pytest.fixture(params=FOLDERS, ids=[p.name for p in FOLDERS], scope="module")
def fx(request) -> Fixture:
    if request.param not in _CACHE:
        _CACHE[request.param] = Fixture(request.param)
    return _CACHE[request.param]


def close(got, want, rtol: float = RTOL) -> None:
    """Within `rtol` of the array's largest magnitude (relative error of the whole output)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape
    err = np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-12)
    assert err < rtol, f"relative error {err:.2e}"


def nchw_to_nhwc(x: np.ndarray) -> np.ndarray:
    return np.moveaxis(x, 1, -1)


def test_audio_windows(fx):
    close(window_frames(fx.io["a_audio_emb_raw"], 2), fx.io["a_audio_windows"], 1e-7)


def test_audio_projection(fx):
    got = apply_part(fx.model.config, fx.model.params, "audio_proj", fx.io["a_audioproj_in"])
    close(got, fx.io["a_audioproj_out"])


def test_image_projection(fx):
    close(apply_part(fx.model.config, fx.model.params, "image_proj", fx.io["b_face_emb"]), fx.io["b_imageproj_out"])
    zeros = np.zeros_like(fx.io["b_face_emb"])
    close(apply_part(fx.model.config, fx.model.params, "image_proj", zeros), fx.io["b_imageproj_zeros_out"])


def test_face_locator(fx):
    x = fx.io["c_face_locator_in"]  # (b, 3, f, H, W)
    b, c, f, h, w = x.shape
    frames = np.moveaxis(x, 2, 1).reshape(b * f, c, h, w)  # (b*f, 3, H, W)
    got = apply_part(fx.model.config, fx.model.params, "face_locator", nchw_to_nhwc(frames))  # (b*f, h', w', C)
    want = fx.io["c_face_locator_out"]  # (b, C, f, h', w')
    close(jnp.moveaxis(got.reshape(b, f, *got.shape[1:]), -1, 1), want)
