"""Head rotation: angle conventions, rotation speed, pose from landmarks, and a landmark-free
estimator.

Coordinates: x right, y down, z towards the viewer. Angles in degrees; R = Rz(roll) Rx(pitch)
Ry(yaw). The head rotation speed of frame f is the angle of R_f R_{f-1}^T in degrees per frame
(the paper's "rotation between consecutive frames"); frame 0 copies frame 1.

Pose from landmarks (`landmark_angles`): the 68 landmarks fitted (OpenCV's SQPnP) to a mean
3-D face (`mean_face`). Per-frame landmark angles jitter by a few degrees (more on small
faces), more than a talking head turns in a frame, so `landmark_speeds` smooths them over time
before taking speeds.

The flow estimator (`FlowPose`) needs no landmark model: it fits a rigid rotating-ellipsoid
head (3 rotation + 2 translation parameters) to dense optical flow inside the face box, with
robust weights, so mouth and eyelid motion count little. Its scale follows the box: in the
landmark back end's box it is unbiased on the synthetic corpus, in Haar's box it read 1.6x
the truth (bench/bench_faces.py). Estimators are pluggable through `POSE_ESTIMATORS`.
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


# Mean frontal face, 68 landmarks (x, y) in outer-eye-corner distances from the eyes' midpoint,
# y down: dlib's landmarks of skimage's astronaut photograph, averaged with their mirror image.
MEAN_FACE_XY = np.array(
    [
        [-0.77, 0.05], [-0.75, 0.25], [-0.72, 0.43], [-0.69, 0.63], [-0.62, 0.81],
        [-0.52, 0.97], [-0.36, 1.11], [-0.19, 1.22], [0.0, 1.25], [0.19, 1.22],
        [0.36, 1.11], [0.52, 0.97], [0.62, 0.81], [0.69, 0.63], [0.72, 0.43],
        [0.75, 0.25], [0.77, 0.05], [-0.66, -0.11], [-0.57, -0.22], [-0.43, -0.23],
        [-0.3, -0.22], [-0.17, -0.17], [0.17, -0.17], [0.3, -0.22], [0.43, -0.23],
        [0.57, -0.22], [0.66, -0.11], [0.0, -0.02], [0.0, 0.13], [0.0, 0.27],
        [0.0, 0.4], [-0.17, 0.47], [-0.08, 0.5], [0.0, 0.52], [0.08, 0.5],
        [0.17, 0.47], [-0.5, 0.0], [-0.42, -0.07], [-0.3, -0.07], [-0.21, 0.03],
        [-0.32, 0.04], [-0.42, 0.04], [0.21, 0.03], [0.3, -0.07], [0.42, -0.07],
        [0.5, 0.0], [0.42, 0.04], [0.32, 0.04], [-0.37, 0.62], [-0.24, 0.61],
        [-0.1, 0.61], [0.0, 0.63], [0.1, 0.61], [0.24, 0.61], [0.37, 0.62],
        [0.25, 0.79], [0.11, 0.86], [0.0, 0.88], [-0.11, 0.86], [-0.25, 0.79],
        [-0.32, 0.64], [-0.1, 0.67], [0.0, 0.68], [0.1, 0.67], [0.32, 0.64],
        [0.1, 0.78], [0.0, 0.8], [-0.1, 0.78],
    ]
)  # fmt: skip
NOSE_DEPTH = (0.12, 0.2, 0.27, 0.35, 0.15, 0.2, 0.25, 0.2, 0.15)  # points 27-35 (bridge to tip)


def mean_face() -> np.ndarray:
    """The mean face (68, 3) in 3-D (z towards the viewer): the landmarks on a head ellipsoid
    0.9 eye-corner distances wide and deep, the nose standing out, the eyes set in, brows and
    lips a little forward."""
    x, y = MEAN_FACE_XY[:, 0], MEAN_FACE_XY[:, 1]
    z = 0.9 * (np.sqrt(np.clip(1 - (x / 0.9) ** 2, 0, 1)) - 1)
    z[27:36] = NOSE_DEPTH
    z[36:48] -= 0.05
    z[17:27] += 0.05
    z[48:68] += 0.05
    return np.stack([x, y, z], axis=1)


def landmark_angles(landmarks: np.ndarray, width: int, height: int) -> np.ndarray:
    """(yaw, pitch, roll) in degrees of a face from its 68 landmarks (68, 2) in an image of
    `width` x `height` (a pinhole camera, focal length twice the longer side)."""
    flip = np.diag([1.0, 1.0, -1.0])  # this module's z towards the viewer <-> OpenCV's away
    f = 2.0 * max(width, height)
    camera = np.array([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1]])
    _, rvec, _ = cv2.solvePnP(
        mean_face() @ flip, landmarks.astype(np.float64), camera, None, flags=cv2.SOLVEPNP_SQPNP
    )
    rot, _ = cv2.Rodrigues(rvec)
    return angles_of(flip @ rot @ flip)


def landmark_speeds(angles: np.ndarray, smooth: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame speeds (F,) and the smoothed angles (F, 3) from landmark angles (F, 3), NaN
    rows where no landmarks were found (interpolated; at least one row must be known): the
    angles smoothed over time (Gaussian, `smooth` frames; odd reflection at the ends, so a
    steady turn keeps its speed there), then `rotation_speed`."""
    from scipy.ndimage import gaussian_filter1d

    known = ~np.isnan(angles).any(axis=1)
    t = np.arange(len(angles))
    filled = np.stack([np.interp(t, t[known], angles[known, k]) for k in range(3)], axis=1)
    if smooth > 0 and len(filled) > 1:
        pad = min(len(filled) - 1, int(3 * smooth))
        padded = np.concatenate(
            [2 * filled[0] - filled[pad:0:-1], filled, 2 * filled[-1] - filled[-2 : -pad - 2 : -1]]
        )
        filled = gaussian_filter1d(padded, smooth, axis=0, mode="nearest")[pad : pad + len(t)]
    return rotation_speed(filled), filled
