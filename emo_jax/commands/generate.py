"""`emo-jax generate`: portrait + audio -> talking-head mp4 (a thin layer over EMOPipeline)."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from emo_jax.commands.arguments import number, number_or_file, whole
from emo_jax.config import SAMPLERS

ASSETS = Path(__file__).resolve().parents[1] / "assets"
EXAMPLE_IMAGE = ASSETS / "face.png"
EXAMPLE_AUDIO = ASSETS / "speech.wav"

DESCRIPTION = """\
Generates a talking-head video of the portrait speaking the audio, clip after clip, and writes
an H.264 mp4 with the audio muxed in.

Without --checkpoint the built-in default model is used: a small EMO (96 px) trained on this
CPU-sized recipe's drawn speaking faces (configs/default/recipe.yaml; `emo-jax info --model`
says what it is). On drawn faces its mouth follows the speech; on a real photograph it runs,
but quality there needs real training data and weights (--checkpoint). With --config and no
--checkpoint, that config runs with random weights (noise: a check of the pipeline only).

Without --image / --audio the shipped examples are used (emo_jax/assets: a drawn held-out
face, face.png, and an English sentence spoken by espeak-ng; portrait.png is a photograph).

The portrait may have any size: a square around the detected face (data.crop_scale x its
size) is resized to the model resolution; if no face is found, pass --mask. Audio: any format
FFmpeg reads, any sample rate and channel count.

A Hallo bundle (`emo-jax convert --src-format hallo`, see README "Run Hallo's weights") runs
Hallo's clip loop: clips of 16 frames with 2 motion frames, DDIM 40 steps, --guidance 3.5
dropping face embedding, audio and face locator together; --face-model gives the face
embedding, --pose-weight / --face-weight / --lip-weight the audio weights per region.
"""


def add_sampling_arguments(p: argparse.ArgumentParser) -> None:
    """--steps, --sampler, --guidance, --audio-guidance, --seed (generate and evaluate)."""
    g = p.add_argument_group("sampling")
    g.add_argument("--steps", type=whole(1), help="denoising steps (default: the model config's)")
    g.add_argument("--sampler", choices=SAMPLERS, help=f"sampler (config: {SAMPLERS[0]})")
    g.add_argument("--guidance", type=number(), help="guidance scale (default: the config's)")
    g.add_argument(
        "--audio-guidance",
        type=number(),
        help="separate audio guidance scale; --guidance is then the reference scale",
    )
    g.add_argument(
        "--seed",
        type=whole(0, 2**32 - 1),
        default=0,
        help="noise seed; same seed, same device: same video",
    )


def sampling_options(args: argparse.Namespace) -> dict:
    """The pipeline Options fields set by `add_sampling_arguments`."""
    return {
        "steps": args.steps,
        "sampler": args.sampler,
        "guidance_scale": args.guidance,
        "audio_guidance_scale": args.audio_guidance,
        "seed": args.seed,
    }


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="portrait + audio -> talking-head mp4 (default: the built-in model)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--image", help=f"portrait image (default: {EXAMPLE_IMAGE.name}, shipped)")
    p.add_argument("--audio", help=f"speech or song, any format (default: {EXAMPLE_AUDIO.name})")
    p.add_argument("--out", required=True, help="output .mp4 (written whole or not at all)")
    p.add_argument(
        "--checkpoint",
        help="model bundle (config.yaml + params/) or exported model folder (emo_index.json); "
        "default: the built-in default model (emo_jax/assets/default_model)",
    )
    p.add_argument(
        "--config",
        help="YAML config replacing the checkpoint's (must fit its params); without "
        "--checkpoint: this config with random weights",
    )
    p.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. diffusion.eta=0.5")
    add_sampling_arguments(p)
    g = p.add_argument_group("video")
    g.add_argument(
        "--speed",
        type=number_or_file(),
        help="head speed in degrees per frame: a constant (speech 0.1-1.0, singing 1.0-1.3; "
        "default 0.5) or a text file with one value per second (see README)",
    )
    g.add_argument(
        "--clip-frames", type=whole(1), help="frames per clip f (config: model.emo.n_frames)"
    )
    g.add_argument(
        "--motion-frames", type=whole(1), help="motion frames n (config: model.emo.n_motion_frames)"
    )
    g.add_argument(
        "--resolution", type=whole(1), help="square side in pixels (default: the model's)"
    )
    g.add_argument("--mask", help="face-region mask image, the portrait's size (white: face)")
    g.add_argument(
        "--face", type=whole(0), help="which face when there are several (0: the largest, default)"
    )
    g.add_argument(
        "--face-expand",
        type=number(positive=True),
        help="face region = the face box enlarged this much (default 1.2, Hallo's ratio)",
    )
    g.add_argument("--frames-dir", help="also write PNG frames to this (new or empty) folder")
    g.add_argument(
        "--devices",
        type=whole(1),
        help="split each clip's guidance passes x frames over this many devices (GPUs, TPU "
        "chips; default 1, config: parallel.generate_devices)",
    )
    h = p.add_argument_group("Hallo models (a bundle converted with --src-format hallo)")
    h.add_argument(
        "--face-model",
        help="insightface's recognition model for the face embedding (Hallo's release: "
        "face_analysis/models/glintr100.onnx); "
        "without it the embedding is zeros (Hallo's fallback), with a warning",
    )
    h.add_argument("--pose-weight", type=number(), help="pose (full-frame) audio weight (1.0)")
    h.add_argument("--face-weight", type=number(), help="face (expression) audio weight (1.0)")
    h.add_argument("--lip-weight", type=number(), help="lip audio weight (1.0)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from emo_jax.errors import check_input
    from emo_jax.interrupt import pause_point
    from emo_jax.pipeline.pipeline import EMOPipeline, check_outputs

    def warn(message, category, *rest, **kw):
        print(f"emo-jax generate: warning: {message}", file=sys.stderr)

    image = args.image or EXAMPLE_IMAGE
    audio = args.audio or EXAMPLE_AUDIO
    defaulted = [
        f"{kind} {path}"
        for kind, given, path in (("image", args.image, image), ("audio", args.audio, audio))
        if not given
    ]
    if defaulted:
        print(f"emo-jax generate: using the example {' and '.join(defaulted)}", file=sys.stderr)
    check_outputs(args.out, args.frames_dir)
    if args.config:
        check_input(args.config, "config file")
    bar = None

    def progress(clip: int, clips: int, step: int, steps: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=clips * steps, unit="step")
        bar.set_description(f"clip {clip + 1}/{clips}", refresh=False)
        bar.update(1)

    with warnings.catch_warnings():
        warnings.showwarning = warn
        pipe = EMOPipeline.from_pretrained(args.checkpoint, args.config, args.overrides)
        options = {
            **sampling_options(args),
            "speed": args.speed,
            "clip_frames": args.clip_frames,
            "motion_frames": args.motion_frames,
            "resolution": args.resolution,
            "mask": args.mask,
            "face": args.face,
            "face_expand": args.face_expand,
            "face_model": args.face_model,
            "pose_weight": args.pose_weight,
            "face_weight": args.face_weight,
            "lip_weight": args.lip_weight,
            "devices": args.devices,
        }
        job = pipe.prepare(image, audio, **{k: v for k, v in options.items() if v is not None})
        print(f"emo-jax generate: loading {pipe.model.source}", file=sys.stderr, flush=True)
        pause_point("load")
        pipe.model.params  # noqa: B018 (read the weights now that the inputs are known good)
        print(
            f"emo-jax generate: {job.num_frames} frames in {job.num_clips} clips; "
            "the first clip compiles the model",
            file=sys.stderr,
            flush=True,
        )
        try:
            result = pipe.generate(
                job, args.out, args.frames_dir, False, None if args.no_progress else progress
            )
        finally:
            if bar is not None:
                bar.close()
    seconds = result.num_frames / result.fps
    print(
        f"{result.path}: {result.num_frames} frames ({seconds:.2f} s at {result.fps} fps), "
        f"{result.reference.image.shape[0]} px, made in {result.seconds:.1f} s"
    )
    return 0
