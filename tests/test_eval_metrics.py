"""Evaluation metrics on constructed cases: correlations, speed buckets, identity, seams."""

import math

import numpy as np
import pytest

from emo_jax.data import synth
from emo_jax.eval import metrics, summary
from emo_jax.eval.mouth import to_haar

CENTERS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4, 1.6)


@pytest.fixture(scope="module")
def clip():
    return synth.render_clip(synth.make_identity(synth.HELDOUT_SEED_BASE + 9), 4.0, 96, 0, "espeak")


def test_correlations():
    x = np.arange(10.0)
    assert metrics.pearson(x, 2 * x + 1) == pytest.approx(1.0)
    assert metrics.pearson(x, -x) == pytest.approx(-1.0)
    assert math.isnan(metrics.pearson(np.ones(10), x))  # constant: undefined
    assert math.isnan(metrics.pearson(x, np.full(10, 3.0)))
    assert metrics.spearman(x, x**3) == pytest.approx(1.0)
    assert metrics.spearman([1, 2, 2, 3], [1, 2, 2, 3]) == pytest.approx(1.0)  # ties
    assert math.isnan(metrics.spearman([1.0], [2.0]))


def test_mean_over_clips_of_an_undefined_correlation():
    nan = math.nan
    assert math.isnan(summary.correlation_mean([nan, nan]))  # the reference repeated
    assert summary.correlation_mean([0.6, nan]) == pytest.approx(0.3)  # frozen clip: 0


def test_speed_buckets():
    requested = np.repeat([0.1, 0.4, 0.8, 1.25], 20)  # -> buckets 0.0/0.2, 0.4, 0.8, 1.2
    result = metrics.speed_buckets(requested, 3 * requested, CENTERS)
    assert [b["requested"] for b in result["buckets"]] == [0.0, 0.4, 0.8, 1.2]
    assert result["spearman"] == pytest.approx(1.0)
    assert metrics.speed_buckets(requested, -requested, CENTERS)["spearman"] == pytest.approx(-1)
    still = metrics.speed_buckets(requested, 1e-6 * requested, CENTERS)  # not motion
    assert math.isnan(still["spearman"])  # constant: undefined
    few = metrics.speed_buckets(np.array([0.0] * 20 + [1.0] * 5), np.zeros(25), CENTERS)
    assert len(few["buckets"]) == 1 and math.isnan(few["spearman"])


def test_head_speed_of_true_frames(clip):
    measured = metrics.head_speeds(clip.frames, to_haar(clip.boxes))
    assert measured.shape == clip.speed.shape
    assert metrics.pearson(measured, clip.speed) > 0.8
    frozen = metrics.head_speeds(np.repeat(clip.frames[:1], 20, axis=0), to_haar(clip.boxes[:20]))
    assert frozen.max() < 1e-3


def test_identity(clip):
    frames, boxes = clip.frames[:10], clip.boxes[:10]
    same = metrics.identity(frames, frames, boxes)
    assert same["psnr"] == math.inf and same["ssim"] == pytest.approx(1.0)
    noise = np.random.default_rng(0).normal(0, 4, frames.shape)
    noisy = np.clip(frames + noise, 0, 255).astype(np.uint8)
    result = metrics.identity(noisy, frames, boxes)
    assert result["psnr"] == pytest.approx(10 * math.log10(255**2 / 16), abs=0.3)
    very = np.clip(frames + 8 * noise, 0, 255).astype(np.uint8)
    assert metrics.identity(very, frames, boxes)["ssim"] < result["ssim"] < 1.0
    # only the face outside the mouth counts: changing the mouth region changes nothing
    mouthless = frames.copy()
    for f, box in zip(mouthless, boxes):
        m = ~metrics.face_mask(box, 96, 96)
        f[m] = 0
    assert metrics.identity(mouthless, frames, boxes)["psnr"] == math.inf
    mask = metrics.face_mask(boxes[0], 96, 96)
    x0, y0, x1, y1 = boxes[0]
    assert mask.sum() < (x1 - x0) * (y1 - y0) * 0.9 and not mask[:, : int(x0)].any()


def test_seams(clip):
    frames = clip.frames[:48]
    boundary, within = metrics.seam_changes(frames, 8)
    assert len(boundary) == 5 and len(within) == 42
    assert 0.5 < metrics.seam_ratio(boundary, within) < 2.0  # a continuous video
    jumpy = frames.astype(np.int16)
    for k in range(0, 48, 8):
        jumpy[k : k + 8] += 30 if (k // 8) % 2 else -30  # each clip brighter or darker
    jumpy = np.clip(jumpy, 0, 255).astype(np.uint8)
    assert metrics.seam_ratio(*metrics.seam_changes(jumpy, 8)) > 5
    assert math.isnan(metrics.seam_ratio(*metrics.seam_changes(np.repeat(frames[:1], 20, 0), 8)))
    assert math.isnan(metrics.seam_ratio(*metrics.seam_changes(frames[:6], 8)))  # one clip


def test_pause_frames():
    rate, fps = 16000, 25
    hop = rate // fps
    loud = np.sin(np.arange(hop * 10) * 0.3)  # 10 frames of sound
    quiet = 1e-3 * np.sin(np.arange(hop * 8) * 0.3)  # 8 frames (0.32 s) at -60 dB: a pause
    short = np.zeros(hop * 7)  # 7 frames (0.28 s): not a pause
    wave = np.concatenate([loud, quiet, loud, short, loud])
    got = metrics.pause_frames(wave, rate, fps, 43)
    assert got.tolist() == [False] * 10 + [True] * 8 + [False] * 25
    assert not metrics.pause_frames(loud, rate, fps, 10).any()
    assert metrics.pause_frames(wave, rate, fps, 45)[-2:].tolist() == [False, False]  # padded


def test_mouth_changes(clip):
    boxes = clip.boxes[:6]
    frames = np.full((6, 96, 96, 3), 100, np.uint8)
    x0, y0, x1, y1 = metrics.lower_face(boxes[3], 96, 96)
    frames[3, y0:y1, x0:x1] += 10  # only the mouth region of frame 3 changes, by 10 levels
    got = metrics.mouth_changes(frames, np.repeat(boxes[3:4], 6, axis=0))
    assert got.tolist() == [0, 0, 10, 10, 0]
    frames[3, :y0] = 0  # outside the region: not counted
    assert metrics.mouth_changes(frames, np.repeat(boxes[3:4], 6, axis=0)).tolist() == got.tolist()


def _row(lip: float, ssim: float, seam: float, pause: float) -> dict:
    return {
        "lip_sync": lip,
        "lip_sync_shuffled": 0.0,
        "psnr": 20.0,
        "ssim": ssim,
        "speed": {"sums": [0.0] * len(CENTERS), "frames": [0] * len(CENTERS)},
        "seams": {"boundary": [seam, 1], "within": [10.0, 10]},
        "pauses": {"opening": [pause, 2], "pause_change": [1.0, 1], "speech_change": [4.0, 2]},
    }


def test_standard_errors_and_paired_differences():
    rng = np.random.default_rng(0)
    a_lip, b_lip = rng.uniform(0, 1, 12), rng.uniform(0, 1, 12)
    a = [{"name": str(i), "v": _row(x, x / 2, 1 + x, x)} for i, x in enumerate(a_lip)]
    b = [{"name": str(i), "v": _row(x, x / 2, 2.0, 0.5)} for i, x in enumerate(b_lip)]
    got = summary.figures([r["v"] for r in a], CENTERS)
    assert got["lip_sync"] == pytest.approx(a_lip.mean())
    assert got["seam_ratio"] == pytest.approx((1 + a_lip).mean())  # pooled: the mean boundary
    assert got["pause_opening"] == pytest.approx(a_lip.mean() / 2)
    assert got["pause_change"] == pytest.approx(0.5)
    assert math.isnan(got["head_speed_spearman"])  # no bucket has frames
    se = summary.standard_errors(a, "v", CENTERS)
    assert se["lip_sync"] == pytest.approx(a_lip.std(ddof=1) / math.sqrt(12))  # of a mean
    assert se["pause_change"] == pytest.approx(0.0, abs=1e-12)
    pairs = summary.paired(a, "v", b, "v", CENTERS)
    d = a_lip - b_lip
    assert pairs["lip_sync"]["difference"] == pytest.approx(d.mean())
    assert pairs["lip_sync"]["se"] == pytest.approx(d.std(ddof=1) / math.sqrt(12))
    assert pairs["identity_ssim"]["se"] == pytest.approx(d.std(ddof=1) / math.sqrt(12) / 2)
    assert pairs["seam_ratio"]["difference"] == pytest.approx((a_lip - 1).mean())
    with pytest.raises(ValueError, match="same clips"):
        summary.paired(a, "v", b[::-1], "v", CENTERS)
