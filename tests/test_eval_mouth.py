"""The mouth-opening measure, validated on ground-truth frames of the speaking-face corpus (held
out, espeak speech, 96 px, through H.264): Pearson with the true opening >= 0.95 with the true
face boxes and with faces tracked by the Haar cascade, as the evaluation tracks them."""

import json

import numpy as np
import pytest

from emo_jax.data import synth
from emo_jax.data.video import iter_frames
from emo_jax.eval import mouth
from emo_jax.eval.metrics import pearson


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("heldout")
    paths = synth.make_corpus(
        folder, 3, 4.0, size=96, split="heldout", audio_source="espeak", progress=False
    )
    clips = []
    for path in paths:
        truth = json.loads(path.with_suffix(".json").read_text())["frames"]
        frames = np.stack(list(iter_frames(path)))
        clips.append((frames, np.array(truth["box"]), np.array(truth["mouth_open"])))
    return clips


def test_measure_follows_the_true_opening(corpus):
    with_truth = [pearson(mouth.mouth_opening(f, boxes), opening) for f, boxes, opening in corpus]
    assert min(with_truth) >= 0.95, with_truth


def test_measure_with_tracked_faces(corpus):
    tracked = [
        pearson(mouth.mouth_opening(f, mouth.from_haar(mouth.track_faces(f))), opening)
        for f, _, opening in corpus
    ]
    assert min(tracked) >= 0.95, tracked


def test_measure_scale(corpus):
    frames, boxes, opening = corpus[0]
    measured = mouth.mouth_opening(frames, boxes)
    assert measured[opening < 0.02].mean() < 0.03  # a shut mouth reads (almost) nothing
    # the full opening is 0.25 head half-heights = 0.19 face-box heights; the measure reads
    # the dark part (teeth partly lost), about 0.15
    slope = np.polyfit(opening, measured, 1)[0]
    assert 0.1 < slope < 0.2


def test_haar_boxes_map_to_the_truth(corpus):
    frames, boxes, _ = corpus[1]
    box = np.array([10.0, 20, 50, 70])
    np.testing.assert_allclose(mouth.from_haar(mouth.to_haar(box)), box)
    tracked = mouth.from_haar(mouth.track_faces(frames))
    size = (boxes[:, 2:] - boxes[:, :2]).mean()
    assert np.abs(np.median(tracked - boxes, axis=0)).max() < 0.06 * size


def test_regions_stay_inside_the_frame():
    x0, y0, x1, y1 = mouth.lower_face(np.array([-10.0, 40, 30, 120]), 96, 96)
    assert 0 <= x0 < x1 <= 96 and 0 <= y0 < y1 <= 96
    assert (
        mouth.mouth_opening(np.zeros((2, 96, 96, 3), np.uint8), np.array([[0, 0, 0, 0.0]] * 2))[0]
        >= 0
    )
    with pytest.raises(ValueError):
        mouth.track_faces(np.zeros((3, 64, 64, 3), np.uint8))
    fallback = np.array([1.0, 2, 30, 40])
    np.testing.assert_array_equal(
        mouth.track_faces(np.zeros((3, 64, 64, 3), np.uint8), fallback), [fallback] * 3
    )
