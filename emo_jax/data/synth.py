"""Procedural synthetic talking-head corpus whose ground truth is known.

Each identity (face shape, skin, hair, eyes, framing, background, voice) is drawn from its seed.
A clip is speech, a mouth that follows it, blinks, and a head that turns (yaw / pitch / roll) at
known, varying speeds; it is written as `<name>.mp4` (H.264 + AAC, 25 fps), `<name>.wav` (16 kHz
mono) and `<name>.json` (per-frame truth).

Audio sources (`AUDIO_SOURCES`):
- "espeak": real English sentences (`emo_jax.data.sentences`) spoken by espeak-ng
  (`emo_jax.data.speech`) in a voice, pitch and rate of the identity's own; the mouth follows
  the phonemes through the viseme table with co-articulation (`emo_jax.data.visemes`). The
  truth adds each frame's mouth rounding, teeth, viseme and phoneme, and the sentences said.
- "syllables": speech-like sounds (formant-filtered syllables), the mouth opening with the
  envelope.

Splits: training identity seeds are below HELDOUT_SEED_BASE, held-out ones at or above it, and
held-out identities speak only held-out sentences (`emo_jax.data.sentences`: a sentence's split
is a hash of its text), so a held-out clip has a face, voice and sentences never trained on.

The head is an ellipsoid; every facial feature is a polygon on its surface, rotated in 3-D and
projected orthographically, so the truth (angles, face box, mouth) is exact by construction.
Angles are degrees: yaw about the image's vertical axis, pitch about the horizontal, roll in the
image plane. Speed of frame f = the angle of the rotation from frame f-1 to f (degrees per frame).
The face box is the bounding box of the projected face (the forehead just above the
eyebrows to the chin, cheek to cheek).

The audio source is pluggable: `AUDIO_SOURCES[name](rng, n_frames, identity)` returns the
waveform (n_frames * SAMPLES_PER_FRAME,) and the mouth's `Speech` truth (per-frame opening in
[0, 1], and the shape where the source knows it).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from emo_jax.config import AudioConfig
from emo_jax.data import sentences, speech, visemes
from emo_jax.data.video import FPS, VideoWriter
from emo_jax.errors import InputError
from emo_jax.faces.pose import rotation, rotation_speed
from emo_jax.files import atomic_write, write_json

SAMPLE_RATE = AudioConfig.sample_rate  # the default model's
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640
_SHIFT = 4  # sub-pixel bits for cv2 drawing
BROW_V, EYE_V, NOSE_V, MOUTH_V = -0.2, 0.02, 0.33, 0.55  # heights on the face, chin = 1
EYE_R = 0.13  # eye half width / head half width
HELDOUT_SEED_BASE = 2**40  # identity seeds of the held-out split start here
SPLITS = ("train", "heldout")
MOUTH_INSIDE = (30, 6, 10)  # RGB of the open mouth's interior
TEETH = (240, 240, 235)
MOUTH_SUPERSAMPLE = 4
_VOWELS = (  # formants F1, F2, F3 (Hz) and how open the mouth is
    ((730, 1090, 2440), 1.0),  # a
    ((530, 1840, 2480), 0.65),  # e
    ((270, 2290, 3010), 0.3),  # i
    ((570, 840, 2410), 0.75),  # o
    ((300, 870, 2240), 0.35),  # u
)


@dataclasses.dataclass(frozen=True)
class Identity:
    """Everything that stays fixed for one person, drawn from a seed by `make_identity`."""

    seed: int
    head_axes: tuple[float, float, float]  # ellipsoid semi-axes (x, y, depth) / frame size
    centre: tuple[float, float]  # head centre / frame size
    skin: tuple[int, int, int]  # RGB
    hair: tuple[int, int, int]
    hairline: float  # top of the face, in units of the head's half height (negative = up)
    brow: tuple[int, int, int]
    iris: tuple[int, int, int]
    lips: tuple[int, int, int]
    clothes: tuple[int, int, int]
    background: tuple[tuple[int, int, int], tuple[int, int, int]]
    eye_gap: float  # half distance between the eyes / head half width
    eye_size: float
    mouth_width: float
    freckles: tuple[tuple[float, float], ...]
    f0: float  # voice pitch (Hz)
    rate: float  # speaking rate factor
    female: bool


def split_of_identity(seed: int) -> str:
    """The split of an identity seed: "heldout" from HELDOUT_SEED_BASE on, else "train"."""
    return "heldout" if seed >= HELDOUT_SEED_BASE else "train"


def _colour(rng: np.random.Generator, lo: tuple, hi: tuple) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(lo, hi))


def make_identity(seed: int) -> Identity:
    """A random but reproducible person."""
    rng = np.random.default_rng([seed, 7])
    tone = rng.uniform(0.25, 1.0)
    skin = tuple(int(c) for c in np.array([95, 60, 40]) + tone * np.array([155, 150, 140]))
    female = bool(rng.random() < 0.5)
    hair_dark = rng.random() < 0.7
    hair = (
        _colour(rng, (15, 10, 5), (70, 50, 40))
        if hair_dark
        else _colour(rng, (140, 90, 40), (230, 190, 120))
    )
    scale = rng.uniform(0.85, 1.05)
    bg = _colour(rng, (30, 30, 30), (225, 225, 225))
    bg2 = tuple(int(np.clip(c + rng.integers(-70, 70), 0, 255)) for c in bg)
    return Identity(
        seed=seed,
        head_axes=(0.24 * scale * rng.uniform(0.92, 1.05), 0.29 * scale, 0.25 * scale),
        centre=(0.5 + rng.uniform(-0.06, 0.06), 0.44 + rng.uniform(-0.04, 0.04)),
        skin=skin,
        hair=hair,
        hairline=rng.uniform(-0.7, -0.55),
        brow=tuple(int(c * 0.6) for c in hair)
        if hair_dark
        else _colour(rng, (50, 35, 20), (90, 70, 50)),
        iris=_colour(rng, (20, 20, 20), (120, 110, 90)),
        lips=tuple(int(c) for c in np.array(skin) * np.array([0.85, 0.55, 0.55])),
        clothes=_colour(rng, (0, 0, 0), (255, 255, 255)),
        background=(bg, bg2),
        eye_gap=rng.uniform(0.28, 0.32),
        eye_size=rng.uniform(0.9, 1.15),
        mouth_width=rng.uniform(0.24, 0.3),
        freckles=tuple(
            (float(u), float(v))
            for u, v in rng.uniform([-0.6, -0.1], [0.6, 0.4], (int(rng.integers(0, 12)), 2))
        ),
        f0=rng.uniform(170, 250) if female else rng.uniform(90, 140),
        rate=rng.uniform(0.85, 1.2),
        female=female,
    )


# --------------------------------------------------------------------------- audio sources


@dataclasses.dataclass(frozen=True)
class Speech:
    """What an audio source knows about the mouth: per-frame opening in [0, 1] and, if known,
    its shape (rounding and teeth in [0, 1], viseme and phoneme names) and per-clip facts."""

    opening: np.ndarray  # (F,) float32
    rounding: np.ndarray | None = None  # (F,); None: 0
    teeth: np.ndarray | None = None  # (F,); None: teeth show when more than 0.3 open
    viseme: tuple[str, ...] | None = None
    phoneme: tuple[str, ...] | None = None
    info: dict = dataclasses.field(default_factory=dict)  # e.g. voice, sentences


def _resonator(x: np.ndarray, freq: float, bandwidth: float) -> np.ndarray:
    """A two-pole formant filter."""
    from scipy.signal import lfilter

    r = np.exp(-np.pi * bandwidth / SAMPLE_RATE)
    a = [1.0, -2 * r * np.cos(2 * np.pi * freq / SAMPLE_RATE), r * r]
    return lfilter([1 - r], a, x)


def _envelope(n: int, attack: int, release: int) -> np.ndarray:
    env = np.ones(n)
    attack, release = min(attack, n // 2), min(release, n // 2)
    env[:attack] = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, attack))
    env[n - release :] = 0.5 + 0.5 * np.cos(np.linspace(0, np.pi, release))
    return env


def syllable_speech(
    rng: np.random.Generator, n_frames: int, identity: Identity
) -> tuple[np.ndarray, Speech]:
    """Speech-like audio: phrases of voiced syllables (glottal pulses through vowel formants,
    some with a noise-burst consonant) with varying pitch and loudness, and pauses.

    Returns the waveform (n_frames * 640,) and the mouth opening per frame: the mean over the
    frame of vowel openness x loudness x syllable envelope (consonants barely open it).
    """
    n = n_frames * SAMPLES_PER_FRAME
    wave = np.zeros(n + 12 * SAMPLE_RATE)  # room for the phrase that runs past the end
    mouth = np.zeros_like(wave)
    formant_scale = 1.15 if identity.female else 1.0
    t = int(rng.uniform(0.15, 0.5) * SAMPLE_RATE)
    while t < n:
        f0 = identity.f0 * rng.uniform(0.9, 1.15)
        for _word in range(int(rng.integers(2, 7))):
            for syl in range(int(rng.integers(1, 4))):
                stressed = syl == 0 and rng.random() < 0.6
                loud = rng.uniform(0.75, 1.0) if stressed else rng.uniform(0.35, 0.75)
                if rng.random() < 0.6:  # consonant onset: a short noise burst, mouth nearly shut
                    m = int(rng.uniform(0.03, 0.08) * SAMPLE_RATE)
                    burst = np.diff(rng.standard_normal(m + 1)) * _envelope(m, m // 4, m // 3)
                    wave[t : t + m] += 0.15 * loud * burst
                    mouth[t : t + m] = np.maximum(mouth[t : t + m], 0.08)
                    t += m
                m = int(rng.uniform(0.11, 0.26) / identity.rate * SAMPLE_RATE)
                formants, openness = _VOWELS[int(rng.integers(len(_VOWELS)))]
                pitch = (
                    f0 * (1.2 if stressed else 1.0) * np.linspace(1.0, rng.uniform(0.85, 1.1), m)
                )
                phase = np.cumsum(pitch / SAMPLE_RATE)
                x = 2 * (phase % 1.0) - 1  # sawtooth glottal source
                for k, f in enumerate(formants):
                    x = _resonator(x, f * formant_scale, 80 + 30 * k)
                x /= np.sqrt(np.mean(x**2)) + 1e-9
                env = _envelope(m, int(0.03 * SAMPLE_RATE), int(0.05 * SAMPLE_RATE)) * loud
                wave[t : t + m] += 0.25 * (0.4 + 0.6 * openness) * x * env  # open vowels are louder
                mouth[t : t + m] = np.maximum(mouth[t : t + m], openness * env)
                t += m
                f0 *= rng.uniform(0.93, 1.03)  # declination with jitter
            t += int(rng.uniform(0.0, 0.08) * SAMPLE_RATE)
        t += int(rng.uniform(0.25, 0.8) * SAMPLE_RATE)  # pause between phrases
    wave = wave[:n] + 1e-3 * rng.standard_normal(n)
    wave *= 0.9 / max(1e-9, np.abs(wave).max())
    per_frame = np.clip(mouth[:n].reshape(n_frames, SAMPLES_PER_FRAME).mean(axis=1), 0, 1)
    return wave.astype(np.float32), Speech(per_frame.astype(np.float32))


def espeak_speech(
    rng: np.random.Generator, n_frames: int, identity: Identity
) -> tuple[np.ndarray, Speech]:
    """English sentences of the identity's split spoken by espeak-ng in the identity's voice
    (rate jittered +-6% per sentence), with pauses of 0.15-0.6 s between them, resampled to
    16 kHz; the mouth follows the phonemes (`emo_jax.data.visemes.mouth_track`). The last
    sentence is cut where the clip ends."""
    voice = speech.voice_for(
        np.random.default_rng([identity.seed, 13]), identity.female, identity.f0, identity.rate
    )
    split = split_of_identity(identity.seed)
    n = n_frames * SAMPLES_PER_FRAME
    wave = np.zeros(n)
    phonemes: list[tuple[str, float]] = []
    said = []
    t = int(rng.uniform(0.1, 0.5) * SAMPLE_RATE)
    while t < n:
        text = sentences.sentence(rng, split)
        rate = int(round(voice.rate * rng.uniform(0.94, 1.06)))
        utt = speech.speak(text, dataclasses.replace(voice, rate=rate))
        spoken = speech.resample(utt.wave, utt.sample_rate, SAMPLE_RATE)
        m = min(len(spoken), n - t)
        wave[t : t + m] = spoken[:m]
        phonemes += [(name, t / SAMPLE_RATE + start) for name, start in utt.phonemes]
        said.append({"text": text, "start": round(t / SAMPLE_RATE, 3)})
        t += len(spoken) + int(rng.uniform(0.15, 0.6) * SAMPLE_RATE)
    wave = np.clip(wave + 1e-3 * rng.standard_normal(n), -1, 1)
    track = visemes.mouth_track(phonemes, n_frames, FPS)
    info = {"voice": dataclasses.asdict(voice), "sentences": said}
    return wave.astype(np.float32), Speech(
        track.opening, track.rounding, track.teeth, track.viseme, track.phoneme, info
    )


AudioSource = Callable[[np.random.Generator, int, Identity], tuple[np.ndarray, Speech]]
AUDIO_SOURCES: dict[str, AudioSource] = {"espeak": espeak_speech, "syllables": syllable_speech}


# --------------------------------------------------------------------------- head motion


def _smooth_noise(rng: np.random.Generator, n: int, sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter1d

    x = gaussian_filter1d(rng.standard_normal(n), sigma, mode="wrap")
    x -= x.mean()  # a clip much shorter than sigma would otherwise be one huge offset
    return x / (x.std() + 1e-9)


def head_motion(rng: np.random.Generator, n_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Angles (F, 3) yaw, pitch, roll in degrees and head sway (F, 2) in head half-widths.

    The speed changes between still, calm and lively stretches of 1-3 s.
    """
    levels = []
    while len(levels) < n_frames:
        levels += [rng.choice([0.05, 0.3, 0.7, 1.2])] * int(rng.integers(25, 75))
    from scipy.ndimage import gaussian_filter1d

    activity = gaussian_filter1d(np.array(levels[:n_frames]), 4)
    limits = np.array([24.0, 12.0, 10.0])
    angles = np.zeros((n_frames, 3))
    theta = rng.uniform(-0.3, 0.3, 3) * limits
    noise = np.stack([_smooth_noise(rng, n_frames, 5) for _ in range(3)], axis=1)
    for f in range(n_frames):
        theta = theta + activity[f] * noise[f] * np.array([1.3, 0.8, 0.6]) - 0.02 * theta
        angles[f] = limits * np.tanh(theta / limits)
    sway = np.stack([_smooth_noise(rng, n_frames, 12) for _ in range(2)], axis=1) * 0.04
    return angles, sway


# --------------------------------------------------------------------------- drawing


def _on_face(uv: np.ndarray, axes: np.ndarray, bulge: np.ndarray | float = 0.0) -> np.ndarray:
    """Frontal coordinates (N, 2) in head half-axes -> 3-D surface points (N, 3) in pixels."""
    uv = np.asarray(uv, np.float64)
    z = np.sqrt(np.clip(1 - (uv**2).sum(axis=1), 0.02, None)) + bulge
    return np.stack([uv[:, 0] * axes[0], uv[:, 1] * axes[1], z * axes[2]], axis=1)


@functools.cache
def _circle(n: int) -> np.ndarray:
    a = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([np.cos(a), np.sin(a)], axis=1)


def _ellipse(cu: float, cv: float, ru: float, rv: float, n: int = 16) -> np.ndarray:
    return _circle(n) * (ru, rv) + (cu, cv)


class _Painter:
    """Draws one identity's frames."""

    def __init__(self, identity: Identity, size: int):
        self.id = identity
        self.size = size
        self.axes = np.array(identity.head_axes) * size
        top, bottom = np.array(identity.background[0]), np.array(identity.background[1])
        ramp = np.linspace(0, 1, size)[:, None, None]
        self.background = (top * (1 - ramp) + bottom * ramp).repeat(size, 1).astype(np.uint8)
        rng = np.random.default_rng([identity.seed, 11])
        for _ in range(3):  # a few soft blobs so the background is not flat
            c = tuple(int(v) for v in rng.integers(0, 255, 3))
            centre = tuple(int(v) for v in rng.integers(0, size, 2))
            cv2.circle(self.background, centre, int(rng.uniform(0.1, 0.3) * size), c, -1)
        self.background = cv2.GaussianBlur(self.background, (0, 0), size / 40)
        half_w = 0.82  # the face is narrower than the head: hair shows at the sides
        u = np.linspace(-half_w, half_w, 13)
        hair_edge = np.stack([u, identity.hairline + 0.25 * u**2], axis=1)  # lower at the temples
        a = np.linspace(0, np.pi, 17)
        jaw = np.stack([half_w * np.cos(a), 0.2 + 0.78 * np.sin(a)], axis=1)
        oval = np.concatenate([hair_edge, jaw])
        mid = np.array([0.0, 0.25])
        # shading: the face oval, then two smaller, lighter copies towards the middle
        self.face_layers = [
            (_on_face(mid + (oval - mid) * k, self.axes), light)
            for k, light in ((1.0, 0.72), (0.86, 0.86), (0.7, 1.0))
        ]
        skin = np.array(identity.skin)
        shade = tuple(int(c) for c in skin * 0.78)
        parts = [
            (pts, tuple(int(c * light) for c in skin), None) for pts, light in self.face_layers
        ]
        for u, v in identity.freckles:
            parts.append((_on_face(_ellipse(u, v, 0.025, 0.02, 6), self.axes), shade, None))
        eye_r = EYE_R * identity.eye_size
        for side in (-1, 1):
            cu = side * identity.eye_gap
            socket = _ellipse(cu, EYE_V - 0.03, eye_r * 1.6, eye_r * 1.1)
            parts.append((_on_face(socket, self.axes), tuple(int(c) for c in skin * 0.62), None))
            u = cu + side * np.linspace(-0.17, 0.2, 6)
            brow = np.stack([u, BROW_V - 0.08 * np.sin(np.linspace(0.3, 2.8, 6))], axis=1)
            parts.append((_on_face(brow, self.axes, 0.02), identity.brow, size / 35))
        bridge = np.array([[0.03, EYE_V + 0.08], [0.06, 0.2], [0.1, 0.3], [0.0, NOSE_V + 0.02]])
        bulge = np.array([0.02, 0.1, 0.2, 0.18])
        parts.append((_on_face(bridge, self.axes, bulge), shade, size / 60))
        for side in (-1, 1):
            nostril = _on_face(_ellipse(side * 0.08, NOSE_V, 0.045, 0.025, 8), self.axes, 0.12)
            parts.append((nostril, tuple(int(c * 0.45) for c in skin), None))
        # everything that only moves with the head, projected in one go per frame
        self.static_points = np.concatenate([p[0] for p in parts])
        ends = np.cumsum([len(p[0]) for p in parts])
        self.static_slices = list(zip(np.concatenate([[0], ends[:-1]]), ends))
        self.static_style = [(p[1], p[2]) for p in parts]
        # the face box: bounding box of the forehead above the eyebrows, the cheeks and the chin
        box_uv = np.concatenate([[[-0.7, BROW_V - 0.15], [0.7, BROW_V - 0.15]], jaw])
        self.box_points = _on_face(box_uv, self.axes)

    def _project(self, pts: np.ndarray, rot: np.ndarray, centre: np.ndarray) -> np.ndarray:
        return (pts @ rot.T)[:, :2] + centre

    def _fill(self, img, pts2d, colour) -> None:
        p = np.round(pts2d * (1 << _SHIFT)).astype(np.int32)
        cv2.fillPoly(img, [p], colour, cv2.LINE_AA, _SHIFT)

    def _line(self, img, pts2d, colour, width) -> None:
        p = np.round(pts2d * (1 << _SHIFT)).astype(np.int32)
        cv2.polylines(img, [p], False, colour, max(1, int(round(width))), cv2.LINE_AA, _SHIFT)

    def _mouth(self, img, proj, mouth_open: float, rounding: float, teeth: float) -> None:
        """Lips around an opening whose height is the mouth opening, drawn MOUTH_SUPERSAMPLE x
        larger and area-averaged, so that even a sliver of an opening covers the right amount
        of its pixels."""
        mw = self.id.mouth_width * (1 - 0.4 * rounding)
        opening, lip = 0.25 * mouth_open, 0.05 * (1 + 0.3 * rounding)
        a = np.linspace(0, np.pi, 9)
        upper = np.stack([-np.cos(a) * mw, MOUTH_V - lip - opening / 2 - 0.03 * np.sin(a)], axis=1)
        lower = np.stack([np.cos(a) * mw, MOUTH_V + lip + opening / 2 + 0.05 * np.sin(a)], axis=1)
        parts = [(np.concatenate([upper, lower]), self.id.lips)]
        inner_r = (mw * 0.8, opening / 2)
        if opening > 0:
            parts.append((_ellipse(0, MOUTH_V, *inner_r, 16), MOUTH_INSIDE))
        if teeth > 0.05 and opening > 0:  # the opening above a chord 0.3 * teeth of it down
            alpha = np.arcsin(1 - 0.6 * teeth)
            arc = np.linspace(np.pi + alpha, 2 * np.pi - alpha, 8)
            parts.append((np.stack([np.cos(arc), np.sin(arc)], 1) * inner_r + (0, MOUTH_V), TEETH))
        parts = [(proj(_on_face(uv, self.axes, 0.06)), colour) for uv, colour in parts]
        lo = np.clip(np.floor(parts[0][0].min(axis=0)).astype(int) - 1, 0, self.size)
        hi = np.clip(np.ceil(parts[0][0].max(axis=0)).astype(int) + 2, 0, self.size)
        if np.any(hi - lo < 1):
            return
        k = MOUTH_SUPERSAMPLE
        patch = img[lo[1] : hi[1], lo[0] : hi[0]]
        big = cv2.resize(patch, None, fx=k, fy=k, interpolation=cv2.INTER_NEAREST)
        for pts, colour in parts:  # pixel centres: x -> (x - lo + 0.5) k - 0.5
            self._fill(big, (pts - lo + 0.5) * k - 0.5, colour)
        patch[:] = cv2.resize(big, patch.shape[1::-1], interpolation=cv2.INTER_AREA)

    def draw(
        self,
        angles: np.ndarray,
        sway: np.ndarray,
        mouth_open: float,
        blink: float,
        rounding: float = 0.0,
        teeth: float = 0.0,
    ) -> tuple[np.ndarray, np.ndarray]:
        """One RGB frame (S, S, 3) and its face box (4,) x0, y0, x1, y1 in pixels. The mouth
        opens with `mouth_open`, narrows and purses with `rounding`, and shows the upper
        teeth (up to 30% of the opening's height) with `teeth`."""
        idn, axes, s = self.id, self.axes, self.size
        img = self.background.copy()
        rot = rotation(*angles)
        centre = np.array(idn.centre) * s + sway * axes[0]
        proj = lambda pts: self._project(pts, rot, centre)  # noqa: E731
        skin = np.array(idn.skin)
        shade = tuple(int(c) for c in skin * 0.78)
        # torso and neck (they do not turn with the head)
        neck_x, neck_top = idn.centre[0] * s, centre[1] + 0.6 * axes[1]
        w = axes[0] * 0.5
        neck = np.array(
            [[neck_x - w, neck_top], [neck_x + w, neck_top], [neck_x + w, s], [neck_x - w, s]]
        )
        self._fill(img, neck, shade)
        top = centre[1] + 1.25 * axes[1]
        torso = np.array(
            [[neck_x - 2.6 * axes[0], s], [neck_x - 2.2 * axes[0], top + 0.25 * axes[1]],
             [neck_x - w, top], [neck_x + w, top], [neck_x + 2.2 * axes[0], top + 0.25 * axes[1]],
             [neck_x + 2.6 * axes[0], s]]
        )  # fmt: skip
        self._fill(img, torso, idn.clothes)
        # head: silhouette of the rotated ellipsoid (hair colour), then the face oval (skin)
        a_mat = rot @ np.diag(1 / (axes * np.array([1.06, 1.06, 1.06])) ** 2) @ rot.T
        m = a_mat[:2, :2] - np.outer(a_mat[:2, 2], a_mat[2, :2]) / a_mat[2, 2]
        evals, evecs = np.linalg.eigh(m)
        ang = np.degrees(np.arctan2(evecs[1, 0], evecs[0, 0]))
        half = 1 / np.sqrt(evals)
        cv2.ellipse(
            img,
            ((centre[0], centre[1] - 0.04 * axes[1]), (2 * half[0], 2 * half[1]), ang),
            idn.hair,
            -1,
            cv2.LINE_AA,
        )
        flat = proj(self.static_points)
        for (lo, hi), colour, width in zip(self.static_slices, *zip(*self.static_style)):
            if width is None:
                self._fill(img, flat[lo:hi], colour)
            else:
                self._line(img, flat[lo:hi], colour, width)
        # eyes: white, iris, pupil (they close when blinking), lid line
        eye_r = EYE_R * idn.eye_size
        open_v = eye_r * 0.45 * (1 - blink)
        for side in (-1, 1):
            cu = side * idn.eye_gap
            if open_v > 0.01:
                for r, bulge, colour in (
                    (1, 0, (205, 200, 195)),
                    (0.6, 0.02, idn.iris),
                    (0.22, 0.03, (10, 10, 10)),
                ):
                    eye = _ellipse(cu, EYE_V, eye_r * r, min(open_v, eye_r * r), 12)
                    self._fill(img, proj(_on_face(eye, axes, bulge)), colour)
            lid = _ellipse(cu, EYE_V, eye_r * 1.05, open_v + 0.01, 16)[8:]
            self._line(img, proj(_on_face(lid, axes, 0.01)), (30, 20, 20), s / 90)
        self._mouth(img, proj, mouth_open, rounding, teeth)
        box_pts = proj(self.box_points)
        box = np.concatenate([box_pts.min(axis=0), box_pts.max(axis=0)])
        return img, np.clip(box, 0, s)


def draw_still(identity: Identity, size: int) -> np.ndarray:
    """The identity facing the camera, eyes open, mouth closed: one (S, S, 3) uint8 frame."""
    return _Painter(identity, size).draw(np.zeros(3), np.zeros(2), 0.0, 0.0)[0]


def _blinks(rng: np.random.Generator, n_frames: int) -> np.ndarray:
    blink = np.zeros(n_frames)
    f = int(rng.integers(10, 80))
    while f < n_frames:
        blink[f : f + 3] = (0.6, 1.0, 0.5)[: max(0, min(3, n_frames - f))]
        f += int(rng.integers(50, 150))
    return blink


@dataclasses.dataclass(frozen=True)
class Clip:
    """A rendered clip and its truth."""

    frames: np.ndarray  # (F, S, S, 3) uint8 RGB
    audio: np.ndarray  # (F * 640,) float32
    mouth: np.ndarray  # (F,) opening in [0, 1]
    angles: np.ndarray  # (F, 3) yaw, pitch, roll (degrees)
    speed: np.ndarray  # (F,) degrees per frame
    boxes: np.ndarray  # (F, 4) x0, y0, x1, y1 (pixels)
    speech: Speech  # the audio source's mouth truth (speech.opening is `mouth`)
    audio_source: str


def render_clip(
    identity: Identity, seconds: float, size: int, seed: int, audio_source: str = "syllables"
) -> Clip:
    """Renders one clip of `identity`; the same arguments give the same clip."""
    if audio_source not in AUDIO_SOURCES:
        raise ValueError(
            f"unknown audio source {audio_source!r} (known: {', '.join(AUDIO_SOURCES)})"
        )
    n_frames = max(1, int(round(seconds * FPS)))
    rng = np.random.default_rng([identity.seed, seed])
    audio, speech = AUDIO_SOURCES[audio_source](rng, n_frames, identity)
    angles, sway = head_motion(rng, n_frames)
    blink = _blinks(rng, n_frames)
    painter = _Painter(identity, size)
    frames = np.empty((n_frames, size, size, 3), np.uint8)
    boxes = np.empty((n_frames, 4))
    rounding = np.zeros(n_frames) if speech.rounding is None else speech.rounding
    teeth = (speech.opening > 0.3) * 1.0 if speech.teeth is None else speech.teeth
    for f in range(n_frames):
        frames[f], boxes[f] = painter.draw(
            angles[f], sway[f], speech.opening[f], blink[f], rounding[f], teeth[f]
        )
    speed = rotation_speed(angles)
    return Clip(frames, audio, speech.opening, angles, speed, boxes, speech, audio_source)


def truth_json(clip: Clip, identity: Identity) -> dict:
    """The per-frame ground truth as a JSON-able dict."""
    r = lambda x: np.round(np.asarray(x, np.float64), 3).tolist()  # noqa: E731
    speech = clip.speech
    frames = {
        "mouth_open": r(clip.mouth),
        "angles": r(clip.angles),
        "speed": r(clip.speed),
        "box": r(clip.boxes),
    }
    shape = {"mouth_round": speech.rounding, "teeth": speech.teeth}
    frames.update({k: r(v) for k, v in shape.items() if v is not None})
    labels = {"viseme": speech.viseme, "phoneme": speech.phoneme}
    frames.update({k: list(v) for k, v in labels.items() if v is not None})
    return {
        "fps": FPS,
        "sample_rate": SAMPLE_RATE,
        "size": list(clip.frames.shape[1:3]),
        "n_frames": len(clip.frames),
        "split": split_of_identity(identity.seed),
        "audio_source": clip.audio_source,
        "identity": dataclasses.asdict(identity),
        **speech.info,
        "angle_order": ["yaw", "pitch", "roll"],
        "box_format": "x0 y0 x1 y1 pixels",
        "frames": frames,
    }


def write_clip(
    out_dir: str | Path,
    name: str,
    identity_seed: int,
    clip_seed: int,
    seconds: float,
    size: int,
    audio_source: str = "syllables",
) -> Path:
    """Renders and writes `<name>.mp4`, `.wav`, `.json` (the mp4 last, atomically); returns it."""
    import soundfile as sf

    out_dir = Path(out_dir)
    identity = make_identity(identity_seed)
    clip = render_clip(identity, seconds, size, clip_seed, audio_source)
    write_json(truth_json(clip, identity), out_dir / f"{name}.json")
    atomic_write(
        out_dir / f"{name}.wav",
        lambda tmp: sf.write(str(tmp), clip.audio, SAMPLE_RATE, format="WAV", subtype="PCM_16"),
    )
    with VideoWriter(
        out_dir / f"{name}.mp4", audio=clip.audio, sample_rate=SAMPLE_RATE, threads=1
    ) as w:
        w.write(clip.frames)
    return out_dir / f"{name}.mp4"


def make_corpus(
    out_dir: str | Path,
    identities: int,
    seconds: float,
    size: int = 128,
    clips: int = 1,
    seed: int = 0,
    workers: int = 1,
    audio_source: str = "syllables",
    progress: bool = True,
    split: str = "train",
) -> list[Path]:
    """Writes `identities` x `clips` clips named `id<NNNN>_clip<NN>` (held-out split:
    `heldout_id<NNNN>_clip<NN>`); returns the mp4 paths.

    Identity i has seed seed * 1_000_003 + i, plus HELDOUT_SEED_BASE in the held-out split.
    The same arguments give the same files; clips already present are kept.
    """
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from tqdm import tqdm

    if size % 2 or size < 32:
        raise InputError(f"--size {size}: must be even and at least 32")
    if audio_source not in AUDIO_SOURCES:
        raise InputError(
            f"unknown audio source {audio_source!r} (known: {', '.join(AUDIO_SOURCES)})"
        )
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r} (known: {', '.join(SPLITS)})")
    first = seed * 1_000_003
    if seed < 0 or first + identities > HELDOUT_SEED_BASE:
        raise InputError(f"--seed {seed}: must be in 0 .. {HELDOUT_SEED_BASE // 1_000_003 - 1}")
    base, prefix = (HELDOUT_SEED_BASE, "heldout_") if split == "heldout" else (0, "")
    out_dir = Path(out_dir)
    jobs = [
        (
            out_dir,
            f"{prefix}id{i:04d}_clip{c:02d}",
            base + first + i,
            c,
            seconds,
            size,
            audio_source,
        )
        for i in range(identities)
        for c in range(clips)
    ]
    todo = [j for j in jobs if not (out_dir / f"{j[1]}.mp4").is_file()]
    bar = tqdm(total=len(todo), desc="synth", unit="clip", disable=not progress)
    if workers <= 1 or len(todo) <= 1:
        for job in todo:
            write_clip(*job)
            bar.update()
    else:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            for _ in pool.map(write_clip, *zip(*todo)):
                bar.update()
    bar.close()
    return [out_dir / f"{j[1]}.mp4" for j in jobs]
