"""`emo-jax app`: the Gradio page on localhost (needs the `app` extra: pip install -e .[app])."""

from __future__ import annotations

import argparse
import sys
import warnings

from emo_jax.commands.arguments import whole


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "app",
        help="web page: upload a portrait and audio, get the video",
        description="Serves a Gradio page where a portrait and an audio file become a "
        "talking-head video. One model per process; requests run one at a time. No outside "
        "network calls. Without --checkpoint the built-in default model is used (a small EMO "
        "trained on drawn speaking faces: `emo-jax info --model`).",
    )
    p.add_argument("--checkpoint", help="model bundle or exported model folder (default: built-in)")
    p.add_argument("--config", help="YAML config replacing the checkpoint's (must fit its params)")
    p.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. diffusion.eta=0.5")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: localhost)")
    p.add_argument("--port", type=whole(1, 65535), default=7860, help="port (default: 7860)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from emo_jax.errors import check_input

    if args.config:
        check_input(args.config, "config file")
    try:
        from emo_jax.app import serve
    except ModuleNotFoundError as e:
        if e.name not in ("gradio", "gradio_client"):
            raise
        print(
            "emo-jax app: error: gradio is not installed (pip install -e '.[app]')", file=sys.stderr
        )
        return 2

    def warn(message, category, *rest, **kw):
        print(f"emo-jax app: warning: {message}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = warn
        serve(args.checkpoint, args.config, args.overrides, args.host, args.port)
    return 0
