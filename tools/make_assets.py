"""Writes the example inputs shipped in emo_jax/assets (see emo_jax.data.examples; nothing is
downloaded). Run from the repository root: python tools/make_assets.py
"""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parents[1] / "emo_jax" / "assets"


def main() -> None:
    import soundfile
    from PIL import Image

    from emo_jax.data import examples

    ASSETS.mkdir(parents=True, exist_ok=True)
    Image.fromarray(examples.face()).save(ASSETS / "face.png", optimize=True)
    Image.fromarray(examples.portrait()).save(ASSETS / "portrait.png", optimize=True)
    speech = examples.speech()
    soundfile.write(ASSETS / "speech.wav", speech.wave, examples.SAMPLE_RATE, subtype="PCM_16")
    for name in ("face.png", "portrait.png", "speech.wav"):
        print(f"{ASSETS / name}: {(ASSETS / name).stat().st_size:,} bytes")
    print(f"speech: {len(speech.wave) / examples.SAMPLE_RATE:.2f} s")


if __name__ == "__main__":
    main()
