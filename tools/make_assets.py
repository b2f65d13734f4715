"""Makes the example inputs shipped in emo_jax/assets (nothing is downloaded):

  portrait.png  scikit-image's astronaut photograph (Eileen Collins, NASA, public domain),
                a 256 x 256 crop around the face
  speech.wav    an English sentence spoken by espeak-ng (emo_jax.data.speech: the
                espeakng-loader wheel through ctypes), 16 kHz mono int16, silence trimmed

Run from the repository root: python tools/make_assets.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

ASSETS = Path(__file__).resolve().parents[1] / "emo_jax" / "assets"
SENTENCE = "Hello! I am a talking portrait, made from a single photo."
SIDE = 256
SAMPLE_RATE = 16000


def portrait() -> np.ndarray:
    """A SIDE x SIDE crop of the astronaut photo centred on her face (kept inside the image)."""
    from skimage import data

    from emo_jax.data.faces import HaarDetector

    image = data.astronaut()
    box = HaarDetector()(image)
    cx, cy = (box[:2] + box[2:]) / 2
    x0 = int(np.clip(round(cx - SIDE / 2), 0, image.shape[1] - SIDE))
    y0 = int(np.clip(round(cy - SIDE / 2), 0, image.shape[0] - SIDE))
    return image[y0 : y0 + SIDE, x0 : x0 + SIDE]


def speech() -> np.ndarray:
    """The sentence at SAMPLE_RATE, leading and trailing silence cut to 0.1 s."""
    from emo_jax.data.speech import Voice, resample, speak

    utterance = speak(SENTENCE, Voice("en"))
    wave = resample(utterance.wave, utterance.sample_rate, SAMPLE_RATE)
    loud = np.flatnonzero(np.abs(wave) > 0.01)
    pad = SAMPLE_RATE // 10
    wave = wave[max(0, loud[0] - pad) : loud[-1] + pad]
    return np.round(np.clip(wave, -1, 1) * 32767).astype(np.int16)


def main() -> None:
    import soundfile
    from PIL import Image

    ASSETS.mkdir(parents=True, exist_ok=True)
    Image.fromarray(portrait()).save(ASSETS / "portrait.png", optimize=True)
    wave = speech()
    soundfile.write(ASSETS / "speech.wav", wave, SAMPLE_RATE, subtype="PCM_16")
    for name in ("portrait.png", "speech.wav"):
        print(f"{ASSETS / name}: {(ASSETS / name).stat().st_size:,} bytes")
    print(f"speech: {len(wave) / SAMPLE_RATE:.2f} s")


if __name__ == "__main__":
    main()
