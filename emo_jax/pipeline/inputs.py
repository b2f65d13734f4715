"""Generation inputs: the portrait (crop and resize around the face, face-region mask), the
audio (any file, or a waveform at any rate and channel count) and the head-speed curve.

Portrait crop: a square centred on the detected face, `crop_scale` x the face box's longer
side (the crop rule of the training data, `emo_jax.data.preprocess`, `data.crop_scale` = 2),
shrunk to fit and kept inside the image; with no face (and a mask given) the centred square of
the image's short side. The square is then resized to the model resolution (area filter
when shrinking, bilinear when enlarging).

Face-region mask: the face box in the resized crop, enlarged about its centre by `face_expand`
(1.2: Hallo's `face_expand_ratio`; the training masks are the union of 12 frames' boxes, so a
single still box is a little small), 1 inside and 0 outside. A mask file (`--mask`) is an image
of the portrait's size, white (>= 128) where the face may move; it gets the portrait's crop.

Head speed: degrees of head rotation per video frame, the unit of the training data
(`emo_jax.faces.pose`; at 25 fps, 1.0 = 25 degrees per second). The paper's useful range for
speech is 0.1-1.0 (singing 1.0-1.3; above 1.5 the motion gets jittery). A curve gives one value
per second: value i is the speed at i seconds, linearly interpolated at each frame's start
time and held after the last value. As a file: plain text, one number per line (blank lines
and `#` comments ignored).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from emo_jax.audio.io import load_audio
from emo_jax.errors import InputError, check_input
from emo_jax.faces.detect import choose_face, make_detector
from emo_jax.faces.track import stable_crop

DEFAULT_SPEED = 0.5  # degrees per frame: the middle of the paper's range for speech
FACE_EXPAND = 1.2


@dataclasses.dataclass(frozen=True)
class Reference:
    """The portrait as the model sees it."""

    image: np.ndarray  # (R, R, 3) uint8 RGB
    mask: np.ndarray  # (R, R) float32 0 / 1: face region
    face_box: np.ndarray | None  # (4,) x0, y0, x1, y1 in `image` pixels (None: not detected)
    crop: tuple[int, int, int]  # x0, y0, side of the square taken from the original image
    notice: str | None = None  # e.g. several faces were found and the largest was used


def _describe(x: Any, kind: str) -> str:
    return str(x) if isinstance(x, (str, Path)) else f"{kind} ({type(x).__name__})"


def read_image(image: Any, kind: str = "image") -> np.ndarray:
    """A path, PIL image or uint8 array (H, W), (H, W, 3) or (H, W, 4) -> RGB uint8 (H, W, 3)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    name = _describe(image, kind)
    if isinstance(image, (str, Path)):
        path = check_input(image, f"{kind} file")
        try:
            with Image.open(path) as im:
                image = ImageOps.exif_transpose(im).convert("RGB")
        except (UnidentifiedImageError, OSError, ValueError) as e:
            reason = "unknown format" if isinstance(e, UnidentifiedImageError) else type(e).__name__
            raise InputError(f"{path}: not a readable image ({reason})") from None
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if (
        array.dtype != np.uint8
        or array.ndim not in (2, 3)
        or array.ndim == 3
        and array.shape[2] not in (1, 3, 4)
    ):
        raise InputError(
            f"{name}: expected a uint8 array (H, W) or (H, W, 3|4), got {array.dtype} {array.shape}"
        )
    if array.ndim == 2 or array.shape[2] == 1:
        array = np.repeat(array.reshape(*array.shape[:2], 1), 3, axis=2)
    if min(array.shape[:2]) < 16:
        raise InputError(f"{name}: the {kind} is too small ({array.shape[1]}x{array.shape[0]} px)")
    return np.ascontiguousarray(array[..., :3])


def read_mask(mask: Any, height: int, width: int) -> np.ndarray:
    """A mask image (path, PIL, array) of the portrait's size -> bool (H, W)."""
    if isinstance(mask, np.ndarray) and mask.dtype != np.uint8:
        array = np.asarray(mask, np.float32)
        if array.ndim == 3:
            array = array.mean(axis=2)
        on = array >= 0.5
    else:
        on = read_image(mask, "mask").mean(axis=2) >= 128
    if on.shape != (height, width):
        raise InputError(
            f"{_describe(mask, 'mask')}: the mask is {on.shape[1]}x{on.shape[0]} px, "
            f"the portrait {width}x{height}; they must match"
        )
    if not on.any():
        raise InputError(f"{_describe(mask, 'mask')}: the mask is empty (all black)")
    return on


def _resize(image: np.ndarray, size: int, nearest: bool = False) -> np.ndarray:
    shrink = image.shape[0] > size
    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interp)


def box_mask(box: np.ndarray, size: int, expand: float) -> np.ndarray:
    """A (size, size) float32 mask of 1 inside `box` enlarged `expand` x about its centre."""
    centre, half = (box[:2] + box[2:]) / 2, (box[2:] - box[:2]) * expand / 2
    x0, y0 = np.floor(np.clip(centre - half, 0, size)).astype(int)
    x1, y1 = np.ceil(np.clip(centre + half, 0, size)).astype(int)
    mask = np.zeros((size, size), np.float32)
    mask[y0:y1, x0:x1] = 1
    return mask


def prepare_reference(
    image: Any,
    resolution: int,
    crop_scale: float = 2.0,
    face_expand: float = FACE_EXPAND,
    mask: Any = None,
    detector: str = "auto",
    face: int | None = None,
) -> Reference:
    """Crops and resizes the portrait and makes the face-region mask (see the module doc)."""
    name = _describe(image, "image")
    rgb = read_image(image)
    height, width = rgb.shape[:2]
    user_mask = None if mask is None else read_mask(mask, height, width)
    found = make_detector(detector).detect(rgb)
    box, notice = None, None
    if found or user_mask is None or face is not None:
        chosen, notice = choose_face(found, face, name)
        box = chosen.box
    if box is None:
        side = min(width, height)
        x0, y0 = (width - side) // 2, (height - side) // 2
    else:
        x0, y0, side = stable_crop(box[None], width, height, crop_scale)
    scale = resolution / side
    out = _resize(rgb[y0 : y0 + side, x0 : x0 + side], resolution)
    face_box = None if box is None else np.clip((box - [x0, y0, x0, y0]) * scale, 0, resolution)
    if user_mask is not None:
        patch = user_mask[y0 : y0 + side, x0 : x0 + side].astype(np.uint8)
        region = _resize(patch, resolution, nearest=True).astype(np.float32)
        if not region.any():
            raise InputError(f"{_describe(mask, 'mask')}: the mask lies outside the face crop")
    else:
        region = box_mask(face_box, resolution, face_expand)
    return Reference(out, region, face_box, (int(x0), int(y0), int(side)), notice)


def to_mono(wave: np.ndarray, name: str = "waveform") -> np.ndarray:
    """(N,), (N, C) or (C, N) samples (int or float) -> mono float32 in [-1, 1]."""
    wave = np.asarray(wave)
    if wave.ndim not in (1, 2) or wave.size == 0:
        raise InputError(f"{name}: expected samples (N,) or (N, channels), got shape {wave.shape}")
    if np.issubdtype(wave.dtype, np.integer):
        wave = wave / float(np.iinfo(wave.dtype).max + 1)
    wave = wave.astype(np.float32)
    if wave.ndim == 2:
        wave = wave.mean(axis=int(np.argmin(wave.shape)))
    if not np.all(np.isfinite(wave)):
        raise InputError(f"{name}: the waveform holds NaN or infinite samples")
    return wave


def read_audio(audio: Any, sample_rate: int | None, target_rate: int) -> tuple[np.ndarray, str]:
    """(mono float32 waveform at `target_rate`, name) from a file or a waveform + its rate."""
    if isinstance(audio, (str, Path)):
        return load_audio(check_input(audio, "audio file"), target_rate), str(audio)
    if isinstance(audio, tuple) and len(audio) == 2:
        audio, sample_rate = audio
    if sample_rate is None:
        raise InputError("waveform: give its sample rate (sample_rate=..., or (waveform, rate))")
    if sample_rate <= 0:
        raise InputError(f"waveform: sample rate {sample_rate} must be positive")
    wave = to_mono(audio)
    if sample_rate != target_rate:
        import librosa

        wave = librosa.resample(wave, orig_sr=sample_rate, target_sr=target_rate)
    return wave.astype(np.float32), "waveform"


def read_speed_curve(path: str | Path) -> np.ndarray:
    """Per-second speeds from a text file: one number per line, `#` comments."""
    path = check_input(path, "speed curve file")
    values = []
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not a readable text file ({type(e).__name__})") from None
    for i, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            value = float(text)
        except ValueError:
            raise InputError(f"{path}:{i}: {text!r} is not a number (one speed per line)") from None
        if not np.isfinite(value) or value < 0:
            raise InputError(f"{path}:{i}: {text}: speeds are finite numbers >= 0")
        values.append(value)
    if not values:
        raise InputError(f"{path}: no speed values (one number per line, one per second)")
    return np.array(values, np.float64)


def speed_per_frame(speed: Any, num_frames: int, fps: float) -> np.ndarray:
    """A constant, a per-second curve (sequence or file) -> (num_frames,) float32."""
    if isinstance(speed, (str, Path)):
        name, curve = str(speed), read_speed_curve(speed)
    else:
        name, curve = "speed", np.atleast_1d(np.asarray(speed, np.float64)).reshape(-1)
    if curve.size == 0 or not np.all(np.isfinite(curve)) or np.any(curve < 0):
        raise InputError(f"{name}: speeds must be finite numbers >= 0 (degrees per frame)")
    t = np.arange(num_frames) / fps
    return np.interp(t, np.arange(len(curve)), curve).astype(np.float32)
