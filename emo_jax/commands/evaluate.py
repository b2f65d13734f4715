"""`emo-jax evaluate`: lip sync, identity, head speed and seams of a model on held-out clips."""

from __future__ import annotations

import argparse
import sys
import warnings

from emo_jax.commands.arguments import number, whole
from emo_jax.commands.generate import add_sampling_arguments, sampling_options

DESCRIPTION = """\
Generates every clip of a corpus folder (normally the held-out split: emo-jax synth --split
heldout) from its first frame and its audio, and measures the video against the clip's truth:
lip sync (Pearson of a mouth-opening measure read from the frames with the true opening), the
same against another clip's opening (shuffled audio: should be near 0), identity (PSNR / SSIM of
the face outside the mouth), head speed (Spearman of measured speed over requested-speed
buckets) and seams (change at clip boundaries / within clips: 1 is seamless). The ground truth
and the reference image repeated are measured the same way, as the ceiling and a control; in the
audio's pauses, the mouth's opening and change are read against the ground truth's. Each
figure has a standard error over clips (jackknife).

--paired-with RESULTS.json (an earlier --out of another model on the same clips) adds this
model's figures minus that one's, each with its paired standard error.

Without --checkpoint the built-in default model is evaluated.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="measure a model on held-out clips (lip sync, identity, head speed, seams)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", help="model bundle or exported folder (default: built-in)")
    p.add_argument("--data", required=True, help="corpus folder (emo-jax synth --split heldout)")
    p.add_argument("--out", help="write the results here as JSON (whole or not at all)")
    p.add_argument(
        "--clips", type=whole(1), help="evaluate only the first N clips (sorted by name)"
    )
    p.add_argument(
        "--seconds", type=number(positive=True), help="use only the first S seconds of each clip"
    )
    p.add_argument(
        "--resolution", type=whole(1), help="square side in pixels (default: the model's)"
    )
    p.add_argument(
        "--paired-with",
        metavar="RESULTS",
        help="an earlier --out on the same clips: print this model minus that one, paired",
    )
    p.add_argument("--no-progress", action="store_true", help="no per-clip progress lines")
    p.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. diffusion.eta=0.5")
    add_sampling_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from emo_jax.errors import check_input, check_output
    from emo_jax.eval import summary
    from emo_jax.eval.evaluate import evaluate, find_clips, format_table, read_results
    from emo_jax.files import write_json
    from emo_jax.pipeline import EMOPipeline

    if args.out:
        check_output(args.out)
    paths = find_clips(check_input(args.data, "corpus folder", folder=True))[: args.clips]
    other = None
    if args.paired_with:
        other = read_results(check_input(args.paired_with, "results file"), paths, args.seconds)

    def announce(i: int, total: int, name: str) -> None:
        if not args.no_progress:
            print(f"emo-jax evaluate: clip {i + 1}/{total} {name}", file=sys.stderr)

    def warn(message, category, *rest, **kw):
        print(f"emo-jax evaluate: warning: {message}", file=sys.stderr)

    options = {**sampling_options(args), "resolution": args.resolution}
    with warnings.catch_warnings():
        warnings.showwarning = warn
        pipe = EMOPipeline.from_pretrained(args.checkpoint, None, args.overrides)
        results = evaluate(
            pipe,
            paths,
            args.seconds,
            {k: v for k, v in options.items() if v is not None},
            announce,
        )
    results = {"checkpoint": pipe.model.source, "data": str(args.data), **results}
    if results["splits"] != ["heldout"]:
        print(
            f"emo-jax evaluate: note: clips of split(s) {', '.join(results['splits'])}, "
            "not only the held-out split",
            file=sys.stderr,
        )
    print(format_table(results))
    if other is not None:
        differences = summary.paired(
            results["per_clip"], "generated", other["per_clip"], "generated",
            tuple(results["speed_centers"]),
        )  # fmt: skip
        results["paired"][f"generated - {args.paired_with}"] = differences
        print(summary.format_paired(f"this model - {args.paired_with} (paired)", differences))
    print(
        f"{results['clips']} clips, {results['resolution']} px, "
        f"{results['total_seconds']:.1f} s ({results['generation_seconds']:.1f} s generating)"
    )
    if args.out:
        write_json(results, Path(args.out))
        print(f"results: {args.out}")
    return 0
