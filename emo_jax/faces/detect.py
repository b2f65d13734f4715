"""Face detection back ends: every face of an image with a score, five points and (where the
back end has them) 68 landmarks, largest first.

Back ends (`BACKENDS`, chosen by `data.detector`):
- "dlib": dlib's HOG detector (frontal and turned faces) and its 68-point shape predictor, the
  model files as the `face_recognition_models` wheel ships them (`pip install 'emo-jax[faces]'`).
- "haar": OpenCV's frontal-face Haar cascade (in the opencv wheel): a box and a score, no
  landmarks; the offline fallback.
- "auto": dlib where it is installed, else haar.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
from pathlib import Path

import cv2
import numpy as np

from emo_jax.errors import InputError

BROW_MARGIN = 0.1  # box top: this fraction of the brow-to-chin height above the brows
WORK_SIDE = 320  # images are searched at this short side (more upsampling for small faces)
MASK_OPTION = "--mask FILE / mask=..."  # how the command line and the Python API take a mask


@dataclasses.dataclass(frozen=True)
class Face:
    """One detected face (coordinates in the image's pixels)."""

    box: np.ndarray  # (4,) x0, y0, x1, y1 (the convention of `emo_jax.faces`)
    score: float  # the back end's confidence (higher: surer; scales differ between back ends)
    points5: np.ndarray | None  # (5, 2) insightface's five points; None: not known
    landmarks: np.ndarray | None  # (68, 2) iBUG 300-W order; None: not known

    @property
    def area(self) -> float:
        return float(np.prod(self.box[2:] - self.box[:2]))


class Backend:
    """A face detector; `detect` finds all faces, calling it gives the largest one's box."""

    name = ""
    has_landmarks = False

    def detect(self, rgb: np.ndarray) -> list[Face]:
        """RGB uint8 (H, W, 3) -> faces, largest first."""
        raise NotImplementedError

    def __call__(self, rgb: np.ndarray) -> np.ndarray | None:
        """The largest face's box (4,), or None."""
        found = self.detect(rgb)
        return found[0].box if found else None


def _by_size(faces: list[Face]) -> list[Face]:
    return sorted(faces, key=lambda f: -f.area)


class HaarBackend(Backend):
    """OpenCV's frontal-face Haar cascade; the score is the cascade's final-stage weight."""

    name = "haar"

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

    def detect(self, rgb: np.ndarray) -> list[Face]:
        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        scale = self.work_size / min(grey.shape)
        if scale != 1:
            interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
            grey = cv2.resize(grey, None, fx=scale, fy=scale, interpolation=interp)
        side = int(self.min_face * min(grey.shape))
        rects, _, weights = self.classifier.detectMultiScale3(
            grey, 1.1, self.neighbours, minSize=(side, side), outputRejectLevels=True
        )
        return _by_size(
            [
                Face(np.array([x, y, x + w, y + h], np.float64) / scale, float(s), None, None)
                for (x, y, w, h), s in zip(rects, np.ravel(weights))
            ]
        )


def dlib_model_dir() -> Path | None:
    """The folder of dlib's model files from the face_recognition_models wheel, or None."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        return None
    models = Path(list(spec.submodule_search_locations)[0]) / "models"
    return models if (models / "shape_predictor_68_face_landmarks.dat").is_file() else None


def dlib_available() -> bool:
    return importlib.util.find_spec("dlib") is not None and dlib_model_dir() is not None


def box_from_landmarks(landmarks: np.ndarray) -> np.ndarray:
    """The face box (4,) of 68 landmarks: cheek to cheek (jaw line), chin to just above the
    brows (BROW_MARGIN of the brow-to-chin height)."""
    jaw, brows = landmarks[:17], landmarks[17:27]
    top, bottom = brows[:, 1].min(), jaw[:, 1].max()
    top -= BROW_MARGIN * (bottom - top)
    return np.array([jaw[:, 0].min(), top, jaw[:, 0].max(), bottom], np.float64)


def five_points(landmarks: np.ndarray) -> np.ndarray:
    """insightface's five points (5, 2) from 68 landmarks: eye centres, nose tip, mouth corners."""
    return np.stack(
        [
            landmarks[36:42].mean(axis=0),
            landmarks[42:48].mean(axis=0),
            landmarks[30],
            landmarks[48],
            landmarks[54],
        ]
    )


class DlibBackend(Backend):
    """dlib's HOG face detector, then the 68-point shape predictor on each face. The image is
    searched at WORK_SIDE (short side), upsampled up to `max_upsample` times until a face is
    found (each step halves the smallest face found, 80 px at the work size without); faces
    scoring below `min_score` (the detector's SVM margin; tilted and turned faces score
    around 0) are dropped."""

    name = "dlib"
    has_landmarks = True

    def __init__(self, max_upsample: int = 2, min_score: float = -0.2):
        import dlib

        models = dlib_model_dir()
        if models is None:
            raise RuntimeError(
                "dlib's face models are not installed: pip install 'emo-jax[faces]' "
                "(face_recognition_models), or set data.detector=haar"
            )
        self.detector = dlib.get_frontal_face_detector()
        self.predictor = _shape_predictor(str(models / "shape_predictor_68_face_landmarks.dat"))
        self.rectangle = dlib.rectangle
        self.max_upsample = max_upsample
        self.min_score = min_score

    def landmarks(self, rgb: np.ndarray, box: np.ndarray) -> np.ndarray:
        """68 landmarks (68, 2) of the face in `box` (x0, y0, x1, y1; dlib's detector box)."""
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        shape = self.predictor(rgb, self.rectangle(x0, y0, x1, y1))
        return np.array([[p.x, p.y] for p in shape.parts()], np.float64)

    def detect(self, rgb: np.ndarray) -> list[Face]:
        rgb = np.ascontiguousarray(rgb)
        scale = WORK_SIDE / min(rgb.shape[:2])
        small = rgb
        if scale < 1:
            small = cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        else:
            scale = 1.0
        for upsample in range(self.max_upsample + 1):
            rects, scores, _ = self.detector.run(small, upsample, self.min_score)
            if rects:
                break
        faces = []
        for r, s in zip(rects, scores):
            box = np.array([r.left(), r.top(), r.right(), r.bottom()], np.float64) / scale
            marks = self.landmarks(rgb, box)
            faces.append(Face(box_from_landmarks(marks), float(s), five_points(marks), marks))
        return _by_size(faces)


@functools.cache
def _shape_predictor(path: str):
    import dlib

    return dlib.shape_predictor(path)  # 100 MB: loaded once per process


BACKENDS = {"dlib": DlibBackend, "haar": HaarBackend}


def resolve(name: str) -> str:
    """A back end's registry name; "auto" -> dlib where installed, else haar."""
    if name == "auto":
        return "dlib" if dlib_available() else "haar"
    if name not in BACKENDS:
        raise ValueError(f"unknown face back end {name!r} (known: auto, {', '.join(BACKENDS)})")
    return name


def make_detector(name: str = "auto") -> Backend:
    """A back end by registry name (see the module doc)."""
    return BACKENDS[resolve(name)]()


def choose_face(faces: list[Face], index: int | None, name: str) -> tuple[Face, str | None]:
    """The face to use (faces largest first): the largest, or number `index`; with a one-line
    notice when there were several and none was named. Errors say what to do."""
    if not faces:
        raise InputError(
            f"{name}: no face found in the portrait (use a photo with the face frontal or three-quarter and at "
            f"least 1/10 of the image, or give the face region with {MASK_OPTION})"
        )
    if index is not None:
        if not 0 <= index < len(faces):
            raise InputError(
                f"{name}: --face {index}: {len(faces)} face(s) found, numbered 0 to "
                f"{len(faces) - 1}, largest first"
            )
        return faces[index], None
    notice = None
    if len(faces) > 1:
        notice = (
            f"{name}: {len(faces)} faces found; using the largest (--face 0); "
            f"--face 1 to {len(faces) - 1} picks another, largest first"
        )
    return faces[0], notice
