"""Head pose from landmarks (emo_jax.faces.pose), the ArcFace embedding (emo_jax.faces.arcface)
with a small ONNX model of the recognition model's interface, and the region masks."""

import cv2
import numpy as np
import pytest

from emo_jax.errors import InputError
from emo_jax.faces import arcface, pose, regions


def _project(angles, size=400.0, scale=120.0):
    """The mean face turned by `angles`, seen by landmark_angles' camera (f = 2 x size) from
    far enough that the face is `scale` px across per eye-corner distance."""
    rot = pose.rotation(*angles)
    pts = pose.mean_face() @ rot.T  # (68, 3), z towards the viewer
    f = 2 * size
    depth = f / scale - pts[:, 2]  # the camera looks along -z
    return np.stack([pts[:, 0] * f / depth, pts[:, 1] * f / depth], 1) + size / 2


@pytest.mark.parametrize("angles", [(0, 0, 0), (20, -8, 5), (-30, 10, -12)])
def test_landmark_angles_recover_a_known_pose(angles):
    got = pose.landmark_angles(_project(angles), 400, 400)
    np.testing.assert_allclose(got, angles, atol=0.5)


def test_landmark_speeds_smooth_jitter_and_keep_a_steady_turn():
    truth = np.stack([np.linspace(0, 20, 40), np.zeros(40), np.zeros(40)], 1)  # 0.513 deg / frame
    angles = truth + np.random.default_rng(0).normal(0, 1.0, truth.shape)  # landmark jitter
    angles[5:8] = np.nan  # frames without landmarks
    speeds, smoothed = pose.landmark_speeds(angles)
    assert smoothed.shape == (40, 3) and not np.isnan(smoothed).any()
    assert speeds.mean() == pytest.approx(20 / 39, rel=0.25)  # unsmoothed: about 3x
    steady, _ = pose.landmark_speeds(truth)
    np.testing.assert_allclose(steady, 20 / 39, rtol=1e-3)  # the ends too


def test_alignment_puts_the_five_points_on_the_template():
    rng = np.random.default_rng(0)
    image = np.zeros((300, 260, 3), np.uint8)
    angle, scale, shift = np.radians(12), 1.7, np.array([60.0, 80.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    points = arcface.ARCFACE_DST @ rot.T + shift  # the template, turned, scaled and moved
    for k, (x, y) in enumerate(points):
        cv2.circle(image, (round(x), round(y)), 3, (255, 40 * k, 0), -1)
    image[..., 2] = rng.integers(0, 30, image.shape[:2])
    aligned = arcface.align(image, points)
    assert aligned.shape == (112, 112, 3)
    for k, (x, y) in enumerate(arcface.ARCFACE_DST):
        near = aligned[int(y) - 4 : int(y) + 5, int(x) - 4 : int(x) + 5]
        ys, xs = np.nonzero((near[..., 0] > 128) & (np.abs(near[..., 1].astype(int) - 40 * k) < 20))
        assert (
            len(xs)
            and abs(xs.mean() - 4 - (x - int(x))) < 1
            and abs(ys.mean() - 4 - (y - int(y))) < 1
        )


def test_embedding_is_the_models_output_on_the_normalised_aligned_face(tiny_arcface):
    import torch

    path, net = tiny_arcface
    model = arcface.ArcFace(path)
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (200, 180, 3), dtype=np.uint8)
    points = arcface.ARCFACE_DST * 1.3 + [20, 30]
    got = model.embed(image, points)
    aligned = arcface.align(image, points)  # RGB, (x - 127.5) / 127.5, NCHW: insightface's blob
    blob = torch.from_numpy((aligned.astype(np.float32) - 127.5) / 127.5).permute(2, 0, 1)[None]
    want = net(blob).detach().numpy()[0]
    np.testing.assert_allclose(got, want / np.linalg.norm(want), atol=1e-5)
    assert got.shape == (512,) and np.linalg.norm(got) == pytest.approx(1, abs=1e-6)


def test_bad_model_files_are_one_line_errors(tmp_path):
    pytest.importorskip("onnxruntime", reason="pip install 'emo-jax[faces]'")
    with pytest.raises(InputError, match="ArcFace model not found"):
        arcface.ArcFace(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(InputError, match="not a readable ONNX model"):
        arcface.ArcFace(junk)


def test_region_masks_follow_hallo():
    marks = pose.MEAN_FACE_XY * 100 + [200, 150]  # a frontal face, 100 px between eye corners
    out = regions.region_masks(marks, 400, 320)
    assert out["face_region"].shape == (320, 400) and out["lip"].shape == (64, 64)
    ys, xs = np.nonzero(out["face_region"])
    outline = marks[regions.FACE_OUTLINE]
    width = outline[:, 0].max() - outline[:, 0].min()
    assert xs.max() + 1 - xs.min() == pytest.approx(1.2 * width, abs=2)
    lip_row = out["lip"][int((marks[57, 1] - 10) * 64 / 320)]  # below the lips: still lip
    assert lip_row.max() > 0.5
    assert out["face"].max() > 0.5 and np.all(out["face"] + out["lip"] <= 1 + 1e-6)
    np.testing.assert_allclose(
        regions.expand_box(np.array([0.0, 0, 10, 10]), 2, 100, 100), [0, 0, 20, 20]
    )
