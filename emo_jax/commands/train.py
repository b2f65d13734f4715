"""`emo-jax train`: one training stage from a config (resumes if its run folder has checkpoints)."""

from __future__ import annotations

import argparse

from emo_jax.commands.arguments import whole


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="run (or resume) a training stage of a stage file")
    p.add_argument("--config", required=True, help="stage file, e.g. configs/train/paper.yaml")
    p.add_argument(
        "--stage", type=whole(0, 3), help="the stage to run (train.stage): 0 autoencoder, 1-3"
    )
    p.add_argument("--coordinator", help="multi-host: address:port of process 0")
    p.add_argument("--num-processes", type=whole(1), help="multi-host: number of processes")
    p.add_argument("--process-id", type=whole(0), help="multi-host: this process's index")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.steps=1000")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from emo_jax.config import load_config
    from emo_jax.errors import check_input

    check_input(args.config, "config file")
    overrides = list(args.overrides)
    for flag, key in (
        (args.stage, "train.stage"),
        (args.coordinator, "parallel.coordinator_address"),
        (args.num_processes, "parallel.num_processes"),
        (args.process_id, "parallel.process_id"),
    ):
        if flag is not None:
            overrides.append(f"{key}={flag}")
    cfg = load_config(args.config, overrides)

    from emo_jax.parallel.mesh import initialize
    from emo_jax.train.autoencoder import train_autoencoder
    from emo_jax.train.emo import train

    initialize(cfg.parallel)
    run_stage = train_autoencoder if cfg.train.stage == 0 else train
    result = run_stage(cfg, progress=not args.no_progress)
    losses = [result["losses"][k] for k in sorted(result["losses"])]
    if losses:
        n = max(1, len(losses) // 10)
        first, last = np.mean(losses[:n]), np.mean(losses[-n:])
        print(
            f"steps {result['start']} -> {result['end']}: mean loss of the first {n} steps "
            f"{first:.4f}, of the last {n} {last:.4f}"
        )
    return 0
