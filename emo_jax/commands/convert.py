"""`emo-jax convert`: weights between PyTorch formats and Orbax, for every part and the whole EMO."""

from __future__ import annotations

import argparse
from pathlib import Path

from emo_jax.interop.formats import FORMATS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="convert weights between PyTorch formats and Orbax",
        description="Formats: " + ", ".join(FORMATS) + ". The source format is detected from what "
        "the path holds; the destination defaults to orbax for PyTorch sources and to the owning "
        "library's format (or 'export' for a whole EMO model) for orbax sources.",
    )
    p.add_argument("--src", required=True, help="file or folder to read")
    p.add_argument(
        "--dst", required=True, help="file or folder to write (written whole or not at all)"
    )
    p.add_argument("--src-format", choices=(*FORMATS, "hallo"))
    p.add_argument("--dst-format", choices=(*FORMATS, "hallo"))
    p.add_argument(
        "--vae", help="with --src-format hallo: the SD VAE folder (default: vae/ beside net.pth)"
    )
    p.add_argument("--wav2vec2", help="with --src-format hallo: the wav2vec2-base-960h folder")
    p.add_argument(
        "--config", help="YAML config: the architecture of an SD single file (default SD1.5)"
    )
    p.add_argument("--ema", action="store_true", help="take the EMA weights of an SD single file")
    p.add_argument(
        "--emo-config",
        help="build a whole EMO model bundle from the config, with --src (SD1.5) in its ReferenceNet "
        "and backbone and --motion-adapter in its temporal modules; the rest keeps its init",
    )
    p.add_argument("--motion-adapter", help="with --emo-config: AnimateDiff motion modules")
    p.add_argument(
        "--allow-unused", action="store_true", help="with --emo-config: ignore unknown keys"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing destination")
    p.set_defaults(func=run)


def _default_dst_format(src_format: str, kind: str) -> str:
    if src_format == "export":
        return "orbax"
    if src_format != "orbax":
        return "orbax"
    if kind == "emo":
        return "export"
    return "transformers" if kind == "wav2vec2" else "diffusers"


def run(args: argparse.Namespace) -> int:
    from emo_jax.config import load_config
    from emo_jax.errors import InputError, check_input, check_output
    from emo_jax.interop import formats

    check_input(args.src, "source", folder=None)
    for path, what in (
        (args.config, "config file"),
        (args.emo_config, "config file"),
        (args.motion_adapter, "motion adapter"),
    ):
        if path:
            check_input(path, what, folder=None if what == "motion adapter" else False)
    check_output(args.dst, folder=True)
    if Path(args.dst).exists() and not args.overwrite:
        raise InputError(f"{args.dst}: already exists (use --overwrite to replace it)")
    if args.src_format == "hallo" or args.dst_format == "hallo":
        from emo_jax.interop import hallo

        if args.src_format == "hallo":
            hallo.to_bundle(args.src, args.dst, args.vae, args.wav2vec2, args.overwrite)
            print(f"{args.src} (hallo) -> {args.dst} (emo_jax model bundle, family hallo)")
        else:
            hallo.from_bundle(args.src, args.dst, args.overwrite)
            print(f"{args.src} -> {args.dst}/net.pth (hallo)")
        return 0
    config = load_config(args.config) if args.config else None
    if args.emo_config:
        from emo_jax.interop.emo_parts import build_emo_bundle

        reports = build_emo_bundle(
            load_config(args.emo_config),
            args.src,
            args.motion_adapter,
            args.dst,
            allow_unused=args.allow_unused,
            overwrite=args.overwrite,
        )
        for r in reports:
            print(r.summary())
        print(f"EMO model bundle -> {args.dst}")
        return 0
    src_format = args.src_format or formats.detect(Path(args.src))
    model = formats.read(args.src, src_format, config, args.ema)
    dst_format = args.dst_format or _default_dst_format(src_format, model.kind)
    formats.write(model, args.dst, dst_format, args.overwrite)
    for note in model.notes:
        print(note)
    print(f"{args.src} ({src_format}, {model.kind}) -> {args.dst} ({dst_format})")
    return 0
