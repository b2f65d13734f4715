"""Phonemes -> mouth shapes: the viseme table and smooth co-articulation.

Every espeak phoneme maps to a viseme (`VISEMES`) and a mouth target: opening (0 shut .. 1
wide open), rounding (0 relaxed .. 1 pursed, narrow lips) and teeth (how much of the teeth
shows). A phoneme holds its target from its start to the next phoneme's start (a lip closure
p b m at least CLOSURE seconds: the lips shut before the release, which is where espeak times
the phoneme); the target curves are then smoothed with a raised-cosine window of `CROSSFADE` seconds, so consecutive
shapes crossfade and short phonemes are partly swallowed by their neighbours, as in real
speech. Frame f shows the smoothed curves at its centre time (f + 0.5) / fps.
"""

from __future__ import annotations

import dataclasses

import numpy as np

VISEMES = ("rest", "closed", "teeth", "open", "rounded")
CROSSFADE = 0.07  # seconds
CLOSURE = 0.06  # seconds
_RESOLUTION = 1000  # curve samples per second


@dataclasses.dataclass(frozen=True)
class Target:
    viseme: str
    opening: float
    rounding: float = 0.0
    teeth: float = 0.0


_T = Target
TABLE: dict[str, Target] = {
    # silence
    "_": _T("rest", 0.02),
    # lips pressed together
    "p": _T("closed", 0.0), "b": _T("closed", 0.0), "m": _T("closed", 0.0),
    # teeth: lip to teeth (f v), tongue between teeth (th), teeth together (s z), tongue to ridge
    "f": _T("teeth", 0.08, 0.0, 1.0), "v": _T("teeth", 0.08, 0.0, 1.0),
    "T": _T("teeth", 0.15, 0.0, 1.0), "D": _T("teeth", 0.15, 0.0, 1.0),
    "s": _T("teeth", 0.1, 0.0, 1.0), "z": _T("teeth", 0.1, 0.0, 1.0),
    "t": _T("teeth", 0.2, 0.0, 0.7), "d": _T("teeth", 0.2, 0.0, 0.7),
    # rounded: lips pushed forward
    "S": _T("rounded", 0.2, 0.7, 0.8), "Z": _T("rounded", 0.2, 0.7, 0.8),
    "tS": _T("rounded", 0.2, 0.7, 0.8), "dZ": _T("rounded", 0.2, 0.7, 0.8),
    "r": _T("rounded", 0.25, 0.5), "w": _T("rounded", 0.12, 1.0),
    "0": _T("rounded", 0.75, 0.5), "O": _T("rounded", 0.7, 0.7), "o": _T("rounded", 0.7, 0.6),
    "oU": _T("rounded", 0.55, 0.8), "OI": _T("rounded", 0.6, 0.6),
    "U": _T("rounded", 0.4, 0.8), "u": _T("rounded", 0.3, 1.0), "3:": _T("rounded", 0.45, 0.4),
    # open: the jaw drops, lips relaxed or spread
    "n": _T("open", 0.22, 0.0, 0.5), "l": _T("open", 0.22, 0.0, 0.5),
    "k": _T("open", 0.3), "g": _T("open", 0.3), "N": _T("open", 0.3), "h": _T("open", 0.4),
    "j": _T("open", 0.25), "?": _T("open", 0.1),
    "a": _T("open", 0.9), "A": _T("open", 1.0), "aI": _T("open", 0.85),
    "aU": _T("open", 0.85, 0.3), "V": _T("open", 0.7), "E": _T("open", 0.65),
    "e": _T("open", 0.65), "eI": _T("open", 0.55), "@": _T("open", 0.4), "3": _T("open", 0.4),
    "@L": _T("open", 0.35), "I": _T("open", 0.3), "i": _T("open", 0.28), "i:": _T("open", 0.25),
}  # fmt: skip


def target(phoneme: str) -> Target | None:
    """The mouth target of an espeak phoneme name (stress marks and variant suffixes are
    ignored: "'aI2" -> "aI"); None for a modifier that does not change the mouth (";")."""
    name = phoneme.lstrip("',%=")
    if name.startswith("_"):
        return TABLE["_"]
    for key in (name, name.rstrip("0123456789#-/[;!"), name[:2], name[:1]):
        if key in TABLE:
            return TABLE[key]
    return None


@dataclasses.dataclass(frozen=True)
class MouthTrack:
    """Per-frame mouth truth."""

    opening: np.ndarray  # (F,) float32 in [0, 1]
    rounding: np.ndarray  # (F,)
    teeth: np.ndarray  # (F,)
    viseme: tuple[str, ...]  # (F,) the viseme whose target holds at the frame's centre
    phoneme: tuple[str, ...]  # (F,) its phoneme ("_" in pauses)


def mouth_track(phonemes: list[tuple[str, float]], n_frames: int, fps: float) -> MouthTrack:
    """Mouth truth for `n_frames` frames from phonemes (name, start seconds) sorted by time;
    before the first phoneme the mouth rests."""
    from scipy.signal import convolve

    duration = n_frames / fps
    n = int(np.ceil(duration * _RESOLUTION)) + 1
    curves = np.zeros((3, n))
    curves[0] = TABLE["_"].opening
    labels: list[tuple[float, str, str]] = [(0.0, "_", "rest")]
    known = [(name, start, target(name)) for name, start in phonemes if start < duration]
    known = [k for k in known if k[2] is not None]
    ends = [start for _, start, _ in known[1:]] + [duration]
    for (name, start, tgt), end in zip(known, ends):
        if tgt.viseme == "closed":  # shut early, but not before the previous phoneme starts
            start = max(labels[-1][0], min(start, end - CLOSURE))
        i = max(0, int(round(start * _RESOLUTION)))
        curves[:, i:] = np.array([[tgt.opening], [tgt.rounding], [tgt.teeth]])
        labels.append((start, name.lstrip("',%="), tgt.viseme))
    half = int(CROSSFADE * _RESOLUTION / 2)
    window = np.hanning(2 * half + 1)
    window /= window.sum()
    padded = np.pad(curves, ((0, 0), (half, half)), mode="edge")
    smooth = np.stack([convolve(c, window, mode="valid") for c in padded])
    centres = (np.arange(n_frames) + 0.5) / fps
    idx = np.minimum(np.round(centres * _RESOLUTION).astype(int), n - 1)
    starts = np.array([s for s, _, _ in labels])
    active = np.searchsorted(starts, centres, side="right") - 1
    return MouthTrack(
        opening=np.clip(smooth[0, idx], 0, 1).astype(np.float32),
        rounding=np.clip(smooth[1, idx], 0, 1).astype(np.float32),
        teeth=np.clip(smooth[2, idx], 0, 1).astype(np.float32),
        viseme=tuple(labels[a][2] for a in active),
        phoneme=tuple(labels[a][1] for a in active),
    )
