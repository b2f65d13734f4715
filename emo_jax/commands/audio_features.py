"""`emo-jax audio-features`: precompute per-video-frame audio features as .npy files."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from emo_jax.errors import InputError, check_input, check_output

AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".m4a", ".aac", ".ogg", ".opus", ".mp4", ".mkv")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "audio-features",
        help="audio file (or folder of them) -> (frames, 2m+1, layers, dim) features as .npy",
    )
    p.add_argument("audio", help="audio or video file, or a folder (searched recursively)")
    p.add_argument("--out", required=True, help="FILE.npy, or a folder when AUDIO is a folder")
    p.add_argument(
        "--config",
        help="YAML config; its model.audio section is used (default: the built-in model's, "
        "which needs no download: `emo-jax info --model`)",
    )
    p.add_argument(
        "--per-frame",
        action="store_true",
        help="leave out the +-m window: (frames, layers, dim), 2m+1 times smaller",
    )
    p.add_argument("--dtype", choices=("float32", "float16"), default="float32")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. model.audio.encoder=mel")
    p.set_defaults(func=run)


def _jobs(audio: Path, out: Path) -> list[tuple[Path, Path]]:
    check_input(audio, "audio file or folder", folder=None)
    check_output(out, folder=audio.is_dir())
    if not audio.is_dir():
        if out.suffix != ".npy":
            raise InputError(f"{out}: --out must end in .npy for one audio file")
        return [(audio, out)]
    files = sorted(p for p in audio.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise InputError(f"{audio}: no audio files ({', '.join(AUDIO_SUFFIXES)})")
    return [(f, (out / f.relative_to(audio)).with_suffix(".npy")) for f in files]


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from emo_jax.audio.features import AudioFeatures
    from emo_jax.config import load_config
    from emo_jax.pipeline.loading import default_config

    jobs = _jobs(Path(args.audio), Path(args.out))
    if args.config:
        cfg = load_config(check_input(args.config, "config file"), args.overrides).model.audio
    else:
        cfg = default_config(args.overrides).model.audio
    features = AudioFeatures(cfg)
    failed = 0
    for src, dst in tqdm(jobs, unit="file", disable=len(jobs) == 1):
        if len(jobs) > 1 and dst.exists():
            continue
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                wave = features.load(src)
            for w in caught:
                print(f"emo-jax audio-features: warning: {w.message}", file=sys.stderr)
            total = features.num_frames(wave)
            with tqdm(total=total, unit="frame", desc=src.name, leave=len(jobs) == 1) as bar:
                shape = features.write(wave, dst, args.per_frame, args.dtype, bar.update)
        except InputError as e:
            if len(jobs) == 1:
                raise
            failed += 1
            print(f"emo-jax audio-features: error: {e}", file=sys.stderr)
            continue
        if len(jobs) == 1:
            print(f"{dst}: {shape} {args.dtype}")
    if failed:
        print(f"emo-jax audio-features: {failed} of {len(jobs)} files failed", file=sys.stderr)
        return 2
    return 0
