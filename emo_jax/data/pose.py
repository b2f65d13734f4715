"""Head rotation: angle conventions, rotation speed, and a landmark-free estimator.

Coordinates: x right, y down, z towards the viewer. Angles in degrees; R = Rz(roll) Rx(pitch)
Ry(yaw). The head rotation speed of frame f is the angle of R_f R_{f-1}^T in degrees per frame
(the paper's "rotation between consecutive frames"); frame 0 copies frame 1.

The default estimator (`FlowPose`) needs no landmark model: it fits a rigid rotating-ellipsoid
head (3 rotation + 2 translation parameters) to dense optical flow inside the face box, with
robust weights, so mouth and eyelid motion count little. Estimators are pluggable through
`POSE_ESTIMATORS` (a landmark + PnP estimator can be added beside it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import cv2
import numpy as np


def rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Rotation matrix (3, 3) from angles in degrees."""
    y, p, r = np.radians([yaw, pitch, roll])
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rx = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
    rz = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    return rz @ rx @ ry


def angles_of(rot: np.ndarray) -> np.ndarray:
    """(yaw, pitch, roll) in degrees of a rotation matrix (inverse of `rotation`)."""
    pitch = np.arcsin(np.clip(rot[2, 1], -1, 1))
    yaw = np.arctan2(-rot[2, 0], rot[2, 2])
    roll = np.arctan2(-rot[0, 1], rot[1, 1])
    return np.degrees([yaw, pitch, roll])


def rotation_speed(angles: np.ndarray) -> np.ndarray:
    """Per-frame speed (F,) in degrees per frame from angles (F, 3)."""
    rots = np.stack([rotation(*a) for a in angles])
    rel = np.einsum("fij,fkj->fik", rots[1:], rots[:-1])  # R_f R_{f-1}^T
    cos = np.clip((np.trace(rel, axis1=1, axis2=2) - 1) / 2, -1, 1)
    speed = np.degrees(np.arccos(cos))
    return np.concatenate([speed[:1], speed]) if len(speed) else np.zeros(len(angles))


def integrate(omegas: np.ndarray) -> np.ndarray:
    """Angles (F, 3) relative to frame 0 from per-frame rotation vectors (F, 3) in radians
    (they drift: use them for display, the speeds for training)."""
    rot = np.eye(3)
    out = []
    for w in omegas:
        step, _ = cv2.Rodrigues(np.asarray(w, np.float64).reshape(3, 1))
        rot = step @ rot
        out.append(angles_of(rot))
    return np.array(out).reshape(-1, 3)


def speeds_from_omegas(omegas: np.ndarray, median: int = 3) -> np.ndarray:
    """Speed (F,) in degrees per frame from rotation vectors (F, 3), median-filtered over time."""
    from scipy.ndimage import median_filter

    speed = np.degrees(np.linalg.norm(omegas, axis=1))
    return median_filter(speed, size=median, mode="nearest") if median > 1 else speed


class PoseEstimator(Protocol):
    """Rotation from one frame to the next."""

    def __call__(self, prev: np.ndarray, cur: np.ndarray, box: np.ndarray) -> np.ndarray:
        """Grey uint8 frames (H, W) and the face box (4,) x0 y0 x1 y1 in `prev` -> rotation
        vector (3,) in radians (about x, y, z) taking the head from `prev` to `cur`."""
        ...


class FlowPose:
    """Rigid head rotation from dense optical flow in the upper face (see the module doc)."""

    def __init__(self, depth: float = 0.6, upper: float = 0.6, min_gradient: float = 8.0):
        self.depth = depth  # head radius / face box size: how far the face stands out
        self.upper = upper  # use the top `upper` of the box (the mouth moves on its own)
        self.min_gradient = min_gradient

    def __call__(self, prev: np.ndarray, cur: np.ndarray, box: np.ndarray) -> np.ndarray:
        x0, y0, x1, y1 = (float(v) for v in box)
        w, h = x1 - x0, y1 - y0
        if w < 4 or h < 4:
            return np.zeros(3)
        flow = cv2.calcOpticalFlowFarneback(prev, cur, None, 0.5, 3, 9, 3, 5, 1.1, 0)
        gx = cv2.Sobel(prev, cv2.CV_32F, 1, 0)
        gy = cv2.Sobel(prev, cv2.CV_32F, 0, 1)
        grad = np.sqrt(gx * gx + gy * gy)
        yy, xx = np.mgrid[0 : prev.shape[0], 0 : prev.shape[1]].astype(np.float32)
        dx, dy = xx - (x0 + x1) / 2, yy - (y0 + y1) / 2
        inside = (dx / (w / 2)) ** 2 + (dy / (h / 2)) ** 2 < 1
        use = inside & (yy < y0 + self.upper * h) & (grad > self.min_gradient)
        if use.sum() < 10:
            return np.zeros(3)
        d = np.stack([dx[use], dy[use]], axis=1)  # (N, 2) from the face centre
        radius = self.depth * max(w, h)
        z = np.sqrt(np.clip(radius**2 - (d**2).sum(axis=1), 0.1 * radius**2, None))
        n = len(d)
        a = np.zeros((2 * n, 5))  # unknowns: tx, ty, wx, wy, wz; flow = t + w x (x, y, z)
        a[:n, 0], a[:n, 3], a[:n, 4] = 1, z, -d[:, 1]
        a[n:, 1], a[n:, 2], a[n:, 4] = 1, -z, d[:, 0]
        y = np.concatenate([flow[..., 0][use], flow[..., 1][use]])
        base = np.tile(np.minimum(grad[use] / 50, 1), 2)
        weights = base
        for _ in range(4):  # iteratively reweighted least squares (Huber-like)
            sol, *_ = np.linalg.lstsq(a * weights[:, None], y * weights, rcond=None)
            r = np.abs(a @ sol - y)
            scale = 1.4826 * np.median(r) + 1e-3
            weights = base * np.minimum(1, 1.5 * scale / np.maximum(r, 1e-9))
        return sol[2:]


POSE_ESTIMATORS: dict[str, Callable[[], PoseEstimator]] = {"flow": FlowPose}
