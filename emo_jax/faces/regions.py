"""Face-region masks from landmarks, as Hallo makes them from MediaPipe's (its `get_mask`):
boxes around the face outline and the lips, enlarged about their centres (face 1.2: Hallo's
`face_expand_ratio`; lips 2.0), shifted back inside the image; blurred at 64 x 64 for the
soft face / lip / background masks its attention layers weight."""

from __future__ import annotations

import cv2
import numpy as np

FACE_EXPAND = 1.2
LIP_EXPAND = 2.0
FACE_OUTLINE = np.r_[0:27]  # jaw and brows (MediaPipe's silhouette also reaches the forehead)
LIPS = np.r_[48:60]  # the outer lip line


def expand_box(box: np.ndarray, expand: float, width: int, height: int) -> np.ndarray:
    """`box` (4,) enlarged `expand` x about its centre, shifted (not cut) to fit the image."""
    centre, size = (box[:2] + box[2:]) / 2, (box[2:] - box[:2]) * expand
    size = np.minimum(size, [width, height])
    lo = np.clip(centre - size / 2, 0, np.array([width, height]) - size)
    return np.concatenate([lo, lo + size])


def box_mask(box: np.ndarray, width: int, height: int) -> np.ndarray:
    """(height, width) float32: 1 inside `box` (rounded outwards), 0 outside."""
    x0, y0 = np.floor(np.clip(box[:2], 0, [width, height])).astype(int)
    x1, y1 = np.ceil(np.clip(box[2:], 0, [width, height])).astype(int)
    mask = np.zeros((height, width), np.float32)
    mask[y0:y1, x0:x1] = 1
    return mask


def points_box(points: np.ndarray) -> np.ndarray:
    return np.concatenate([points.min(axis=0), points.max(axis=0)])


def _blur(mask: np.ndarray, kernel: int) -> np.ndarray:
    small = cv2.GaussianBlur(cv2.resize(mask, (64, 64)), (kernel, kernel), 0)
    return small / max(float(small.max()), 1e-6)  # (64, 64) in [0, 1]


def region_masks(
    landmarks: np.ndarray, width: int, height: int, face_expand: float = FACE_EXPAND
) -> dict[str, np.ndarray]:
    """Masks of a face with 68 landmarks (68, 2) in a `width` x `height` image:
    "face_region" (height, width) 0 / 1, the face box at `face_expand` (Hallo's face mask, the
    face locator's input); "lip" (64, 64) the blurred lip box at LIP_EXPAND; "face" (64, 64)
    the blurred face box less the lips; "background" (64, 64) 1 less the blurred face box."""
    face_box, lip_box = points_box(landmarks[FACE_OUTLINE]), points_box(landmarks[LIPS])
    return box_region_masks(face_box, lip_box, width, height, face_expand)


def box_region_masks(
    face_box: np.ndarray,
    lip_box: np.ndarray,
    width: int,
    height: int,
    face_expand: float = FACE_EXPAND,
) -> dict[str, np.ndarray]:
    """`region_masks` from the face outline's and the lips' boxes (4,) x0, y0, x1, y1."""
    face = box_mask(expand_box(face_box, face_expand, width, height), width, height)
    lip = box_mask(expand_box(lip_box, LIP_EXPAND, width, height), width, height)
    blurred_face, blurred_lip = _blur(face, 51), _blur(lip, 31)
    return {
        "face_region": face,
        "lip": blurred_lip,
        "face": np.clip(blurred_face - blurred_lip, 0, 1),
        "background": 1 - blurred_face,
    }
