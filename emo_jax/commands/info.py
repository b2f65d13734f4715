"""`emo-jax info`: a config and its parameter counts per component (nothing allocated); with
--model, the model `generate` would load: what it is, what it was trained on, how it scored."""

from __future__ import annotations

import argparse

import yaml

from emo_jax.config import Config, load_config, to_dict


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="print a config and its parameter counts per component")
    p.add_argument("--config", help="YAML config (defaults: SD1.5 sizes)")
    p.add_argument(
        "--model",
        nargs="?",
        const="default",
        help="describe a model bundle / exported folder instead (no value: the built-in default "
        "that generate uses without --checkpoint)",
    )
    p.add_argument(
        "overrides", nargs="*", help="dotted overrides, e.g. model.unet.layers_per_block=1"
    )
    p.add_argument("--quiet-config", action="store_true", help="print only the counts")
    p.set_defaults(func=run)


def describe_model(path: str | None) -> Config:
    """Prints where a model comes from and its card (the built-in model's); returns its config."""
    from emo_jax.pipeline.loading import resolve_checkpoint

    model = resolve_checkpoint(path)
    print(f"model: {model.source}")
    for key, value in (model.card or {}).items():
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v}" for k, v in value.items())
        print(f"  {key}: {value}")
    return model.config


def run(args: argparse.Namespace) -> int:
    from emo_jax.errors import check_input
    from emo_jax.models.inventory import parameter_counts

    if args.config:
        check_input(args.config, "config file")
    if args.model is not None:
        config = describe_model(None if args.model == "default" else args.model)
        print()
    else:
        config = load_config(args.config, args.overrides)
    if not args.quiet_config:
        print(yaml.safe_dump(to_dict(config), sort_keys=False).rstrip())
        print()
    counts = parameter_counts(config)
    width = max(map(len, counts)) + 2
    print(f"{'component':<{width}}{'parameters':>16}")
    for name, n in counts.items():
        print(f"{name:<{width}}{n:>16,}")
    print(f"{'total':<{width}}{sum(counts.values()):>16,}")
    return 0
