"""Outputs get the permissions the umask gives, as open() and mkdir() would (not the private
0600 / 0700 of a temporary name), and a replaced file keeps its mode: the mp4 writer, the
frames folder and every atomically written file. Also the face locator's fallback mask, which
must follow the VAE's downsampling factor."""

import os
import stat

import jax
import numpy as np
import pytest

from emo_jax.config import load_config
from emo_jax.data.video import VideoWriter
from emo_jax.files import atomic_folder, atomic_write
from emo_jax.models.emo import EMOModel, dummy_inputs
from emo_jax.pipeline.loading import TINY_CONFIG


@pytest.fixture(params=[0o022, 0o077], ids=["umask-022", "umask-077"])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_new_outputs_follow_the_umask(tmp_path, umask):
    with VideoWriter(tmp_path / "v.mp4") as w:
        w.write(np.zeros((2, 16, 16, 3), np.uint8))
    with atomic_folder(tmp_path / "frames") as tmp:
        (tmp / "000000.png").write_bytes(b"png")
    atomic_write(tmp_path / "f.json", lambda p: p.write_text("{}"))
    assert mode(tmp_path / "v.mp4") == 0o666 & ~umask
    assert mode(tmp_path / "frames") == 0o777 & ~umask
    assert mode(tmp_path / "f.json") == 0o666 & ~umask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json", "frames", "v.mp4"]


def test_replacing_keeps_the_mode(tmp_path, umask):
    for name in ("v.mp4", "f.json"):
        (tmp_path / name).write_text("old")
        os.chmod(tmp_path / name, 0o640)
    with VideoWriter(tmp_path / "v.mp4") as w:
        w.write(np.zeros((2, 16, 16, 3), np.uint8))
    atomic_write(tmp_path / "f.json", lambda p: p.write_text("{}"))
    assert mode(tmp_path / "v.mp4") == 0o640 and mode(tmp_path / "f.json") == 0o640
    assert (tmp_path / "f.json").read_text() == "{}"


def test_the_fallback_face_mask_follows_the_vae_factor():
    """A 4x VAE (and face locator): without a mask the locator gets a 4h x 4w mask of ones
    (an 8x one would not fit the latents). Traced only (eval_shape), nothing compiled."""
    overrides = [
        "model.vae.block_out_channels=[16,32,32]",
        "model.emo.face_locator_channels=[8,16,16]",
    ]
    cfg = load_config(TINY_CONFIG, overrides).model
    assert cfg.vae.factor == 4
    model = EMOModel(cfg)
    latents, t, ref, audio, mask, speed = dummy_inputs(cfg, 1)
    assert mask.shape[1:] == (4 * latents.shape[2], 4 * latents.shape[3])

    def init(face_mask):
        key = jax.random.key(0)
        return model.init(key, latents, t, ref, audio, face_mask, speed, method=EMOModel.init_all)

    params = jax.eval_shape(lambda: init(None))  # an 8x mask: a shape error in the trace
    assert params["params"]["face_locator"]["conv_out"]["kernel"].shape[-1] == 32
