"""The example inputs shipped in emo_jax/assets, and the truth about them (tools/make_assets.py
writes the files; tests check generated video against the truth):

  face.png      a drawn person of the held-out split (`emo-jax synth`'s painter), facing the
                camera, mouth closed: the kind of face the built-in default model knows
  portrait.png  scikit-image's astronaut photograph (Eileen Collins, NASA, public domain),
                a 256 x 256 crop around the face: a real photograph
  speech.wav    an English sentence spoken by espeak-ng, 16 kHz mono int16, silence trimmed;
                its mouth opening per video frame comes from the phonemes (`speech_opening`)
"""

from __future__ import annotations

import dataclasses

import numpy as np

from emo_jax.data.speech import Voice, resample, speak
from emo_jax.data.synth import HELDOUT_SEED_BASE, SAMPLE_RATE, draw_still, make_identity
from emo_jax.data.visemes import mouth_track
from emo_jax.faces.detect import HaarBackend

SENTENCE = "Hello! I am a talking portrait, made from a single photo."
SIDE = 256
FACE_IDENTITY = 3  # held-out identity index (seed HELDOUT_SEED_BASE + 3)
PAD = SAMPLE_RATE // 10  # silence kept before and after the speech


@dataclasses.dataclass(frozen=True)
class ExampleSpeech:
    wave: np.ndarray  # (N,) int16 at SAMPLE_RATE: the content of speech.wav
    opening: np.ndarray  # (frames,) mouth opening in [0, 1] per video frame at `fps`
    fps: float


def speech(fps: float = 25.0) -> ExampleSpeech:
    """The sentence at SAMPLE_RATE, leading and trailing silence cut to PAD, with the mouth
    opening of its phonemes (shifted by the cut)."""
    utterance = speak(SENTENCE, Voice("en"))
    wave = resample(utterance.wave, utterance.sample_rate, SAMPLE_RATE)
    loud = np.flatnonzero(np.abs(wave) > 0.01)
    start = max(0, loud[0] - PAD)
    wave = wave[start : loud[-1] + PAD]
    shift = start / SAMPLE_RATE
    phonemes = [(name, t - shift) for name, t in utterance.phonemes]
    frames = int(round(len(wave) / SAMPLE_RATE * fps))
    opening = mouth_track(phonemes, frames, fps).opening
    pcm = np.round(np.clip(wave, -1, 1) * 32767).astype(np.int16)
    return ExampleSpeech(pcm, opening, fps)


def face(side: int = SIDE) -> np.ndarray:
    """A held-out drawn person, (side, side, 3) uint8 RGB, facing the camera, mouth closed."""
    return draw_still(make_identity(HELDOUT_SEED_BASE + FACE_IDENTITY), side)


def portrait() -> np.ndarray:
    """A SIDE x SIDE crop of the astronaut photo centred on her face (kept inside the image)."""
    from skimage import data

    image = data.astronaut()
    box = HaarBackend()(image)
    cx, cy = (box[:2] + box[2:]) / 2
    x0 = int(np.clip(round(cx - SIDE / 2), 0, image.shape[1] - SIDE))
    y0 = int(np.clip(round(cy - SIDE / 2), 0, image.shape[0] - SIDE))
    return image[y0 : y0 + SIDE, x0 : x0 + SIDE]
