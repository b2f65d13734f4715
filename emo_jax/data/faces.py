"""Face detection (pluggable; OpenCV Haar cascade by default, shipped in the opencv wheel, so
nothing is downloaded), face tracks with gaps filled and jitter smoothed, and the stable crop.

Boxes are float arrays (4,) x0, y0, x1, y1 in pixels: the face from the forehead above the
eyebrows to the chin, cheek to cheek (the convention of OpenCV's frontal cascades and
MediaPipe's detector).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import cv2
import numpy as np


class FaceDetector(Protocol):
    """Finds the main face of a frame."""

    def __call__(self, frame: np.ndarray) -> np.ndarray | None:
        """RGB uint8 (H, W, 3) -> the largest face's box (4,), or None."""
        ...


class HaarDetector:
    """OpenCV's frontal-face Haar cascade, run on the frame scaled to `work_size` (short side)
    so that small faces are found and big frames stay fast."""

    def __init__(
        self,
        cascade: str = "haarcascade_frontalface_alt2.xml",
        work_size: int = 256,
        min_face: float = 0.15,
        neighbours: int = 3,
    ):
        path = cv2.data.haarcascades + cascade
        self.classifier = cv2.CascadeClassifier(path)
        if self.classifier.empty():
            raise RuntimeError(f"{path}: OpenCV could not load the cascade (opencv 4.x ships it)")
        self.work_size = work_size
        self.min_face = min_face  # smallest face side / short side
        self.neighbours = neighbours

    def __call__(self, frame: np.ndarray) -> np.ndarray | None:
        grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        scale = self.work_size / min(grey.shape)
        if scale != 1:
            interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
            grey = cv2.resize(grey, None, fx=scale, fy=scale, interpolation=interp)
        side = int(self.min_face * min(grey.shape))
        found = self.classifier.detectMultiScale(grey, 1.1, self.neighbours, minSize=(side, side))
        if len(found) == 0:
            return None
        x, y, w, h = max(found, key=lambda r: r[2] * r[3])
        return np.array([x, y, x + w, y + h], np.float64) / scale


DETECTORS: dict[str, Callable[[], FaceDetector]] = {"haar": HaarDetector}


def make_detector(name: str) -> FaceDetector:
    """A detector by registry name."""
    if name not in DETECTORS:
        raise ValueError(f"unknown face detector {name!r} (known: {', '.join(DETECTORS)})")
    return DETECTORS[name]()


def fill_track(boxes: Sequence[np.ndarray | None], smooth: float = 1.5) -> np.ndarray:
    """Per-frame boxes (T, 4) from detections with gaps: missing frames are interpolated (held
    at the ends), then centres and sizes are smoothed over time (Gaussian, `smooth` frames)."""
    from scipy.ndimage import gaussian_filter1d

    found = np.array([b is not None for b in boxes])
    if not found.any():
        raise ValueError("no face in any frame")
    t = np.arange(len(boxes))
    known = np.stack([b for b in boxes if b is not None])
    track = np.stack([np.interp(t, t[found], known[:, k]) for k in range(4)], axis=1)
    if smooth > 0 and len(track) > 1:
        track = gaussian_filter1d(track, smooth, axis=0, mode="nearest")
    return track


def stable_crop(boxes: np.ndarray, width: int, height: int, scale: float) -> tuple[int, int, int]:
    """One square crop (x0, y0, side) for a whole track: centred on the median face centre,
    `scale` times the median face size, grown to hold every box, kept inside the frame."""
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    cx, cy = np.median(centres, axis=0)
    size = np.median(np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]))
    reach = np.max(np.abs(np.concatenate([boxes[:, [0, 2]] - cx, boxes[:, [1, 3]] - cy], 1)))
    side = int(round(min(max(scale * size, 2 * reach + 2), width, height)))
    x0 = int(round(np.clip(cx - side / 2, 0, width - side)))
    y0 = int(round(np.clip(cy - side / 2, 0, height - side)))
    return x0, y0, side


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes (..., 4) and (..., 4)."""
    lo = np.maximum(a[..., :2], b[..., :2])
    hi = np.minimum(a[..., 2:], b[..., 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=-1)
    area = lambda x: np.prod(x[..., 2:] - x[..., :2], axis=-1)  # noqa: E731
    return inter / (area(a) + area(b) - inter)
