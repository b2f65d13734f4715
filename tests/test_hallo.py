"""Hallo (fudan-generative-vision/hallo) through emo_jax: every output recorded in a Hallo
fixture folder (tests/fixtures/hallo-tiny, or the `:`-separated folders in EMO_HALLO_FIXTURES)
reproduced from its `net.pth` within 1e-4 relative, float32."""

import json
import os
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from emo_jax.audio.features import window_frames
from emo_jax.interop import hallo
from emo_jax.models.hallo import HalloModel, apply_part, encode_reference

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


def video_in(x: np.ndarray) -> np.ndarray:
    """Hallo's (b, c, f, h, w) -> emo_jax's (b, f, h, w, c)."""
    return np.moveaxis(x, 1, -1)


def video_out(x) -> np.ndarray:
    """emo_jax's (b, f, h, w, c) -> Hallo's (b, c, f, h, w)."""
    return np.moveaxis(np.asarray(x), -1, 1)


def masks(io: dict, prefix: str, levels: int) -> tuple:
    """Per level, the (full, face, lip) masks (rows, L^2) of the guided pair."""
    out = []
    for k in range(levels):
        level = [io[f"{prefix}_{r}_mask_{k}"] for r in ("full", "face", "lip")]
        out.append(
            tuple(m if m.shape[0] % 2 == 0 and prefix == "d" else np.tile(m, (2, 1)) for m in level)
        )
    return tuple(out)


def tree_get(tree: dict, dotted: str):
    """A leaf of an emo_jax tree by Hallo's dotted module name (`down_blocks.0.attentions.0...`)."""
    parts = dotted.split(".")
    names, i = [], 0
    while i < len(parts):
        if i + 1 < len(parts) and parts[i + 1].isdigit():
            names.append(f"{parts[i]}_{parts[i + 1]}")
            i += 2
        else:
            names.append(parts[i])
            i += 1
    for n in names:
        tree = tree[n]
    return tree


def test_audio_windows(fx):
    close(window_frames(fx.io["a_audio_emb_raw"], 2), fx.io["a_audio_windows"], 1e-7)


def test_audio_projection(fx):
    got = apply_part(fx.model.config, fx.model.params, "audio_proj", fx.io["a_audioproj_in"])
    close(got, fx.io["a_audioproj_out"])


def test_image_projection(fx):
    close(
        apply_part(fx.model.config, fx.model.params, "image_proj", fx.io["b_face_emb"]),
        fx.io["b_imageproj_out"],
    )
    zeros = np.zeros_like(fx.io["b_face_emb"])
    close(
        apply_part(fx.model.config, fx.model.params, "image_proj", zeros),
        fx.io["b_imageproj_zeros_out"],
    )


def test_face_locator(fx):
    x = fx.io["c_face_locator_in"]  # (b, 3, f, H, W)
    b, c, f, h, w = x.shape
    frames = np.moveaxis(x, 2, 1).reshape(b * f, c, h, w)  # (b*f, 3, H, W)
    got = apply_part(
        fx.model.config, fx.model.params, "face_locator", nchw_to_nhwc(frames)
    )  # (b*f, h', w', C)
    want = fx.io["c_face_locator_out"]  # (b, C, f, h', w')
    close(jnp.moveaxis(got.reshape(b, f, *got.shape[1:]), -1, 1), want)


def test_denoiser_with_reference_bank(fx):
    io, cfg, params = fx.io, fx.model.config, fx.model.params
    model = HalloModel(cfg)
    stack = nchw_to_nhwc(io["d_ref_latents"])  # (1+M, h, w, 4)
    features = encode_reference(model, params, stack, io["d_encoder_hidden_states"])
    n = stack.shape[0]
    for entry in json.loads((fx.folder / "fixture.json").read_text())["bank"]:
        bank = io[f"d_bank_{entry['index']:02d}"].reshape(2, n, -1, entry["shape"][-1])
        got = np.asarray(tree_get(features["reference"], entry["reader"])["tokens"])
        # Hallo rounds the bank to float16: values may sit one float16 step apart.
        step = np.spacing(np.abs(bank[:, 0]).astype(np.float16)).astype(np.float32)
        assert np.all(np.abs(got - bank[:, 0]) <= step + 1e-6), entry["reader"]
    conds = {
        "context": io["d_encoder_hidden_states"],
        "audio": io["d_audio_embedding"],
        "residual": video_in(io["d_mask_cond_fea"]),
    }
    levels = len(cfg.unet.block_out_channels)
    out = model.apply(
        {"params": params},
        video_in(io["d_latent_model_input"]),
        io["d_timestep"],
        features,
        conds,
        masks(io, "d", levels),
        io["d_motion_scale"],
    )
    close(video_out(out), io["d_noise_pred"])
