"""Face tracks over a video (gaps filled, jitter smoothed), the stable crop and box overlap
(boxes in the convention of `emo_jax.faces`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


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
