"""The default model's recipe (configs/default/recipe.yaml): wall time per step as the recipe
recorded it (a resumed step: its last run only), each training stage's steps, its median step
time and training time over all its runs from its metrics, and the evaluation's runtime
(generation vs measuring). Run it after `emo-jax recipe configs/default/recipe.yaml`,
from the directory the recipe ran in.

    python bench/bench_recipe.py [--recipe configs/latent24/recipe.yaml]
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

import numpy as np

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "default" / "recipe.yaml"


def main() -> None:
    from emo_jax.commands.recipe import config_of, load_recipe, read_state, stage_of
    from emo_jax.config import load_config
    from emo_jax.train.metrics import step_seconds

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default=str(RECIPE), help="e.g. configs/latent24/recipe.yaml")
    args = p.parse_args()
    state_path, steps = load_recipe(args.recipe)
    state = read_state(state_path)
    print(
        f"{'step':<12}{'wall (s)':>10}{'opt. steps':>12}{'s / step':>10}{'steps (s)':>11}"
        f"{'final eval':>12}"
    )
    total = 0.0
    for name, argv in steps.items():
        seconds = state.get(name, {}).get("seconds", float("nan"))
        total += 0 if np.isnan(seconds) else seconds
        extra = ""
        if argv[0] == "train":
            cfg = load_config(config_of(argv), stage_of(argv))
            run = Path(cfg.train.out_dir)
            evals = run / "eval.jsonl"
            last = json.loads(evals.read_text().splitlines()[-1])["loss"] if evals.is_file() else 0
            times = step_seconds(run)
            per_step = float(np.median(times)) if len(times) else float("nan")
            extra = f"{cfg.train.steps:>12}{per_step:>10.3f}{times.sum():>11.0f}{last:>12.4f}"
        print(f"{name:<12}{seconds:>10.0f}{extra}")
    print(f"{'total':<12}{total:>10.0f}  ({total / 3600:.2f} h)")
    evaluate = steps["evaluate"]
    evaluation = Path(evaluate[evaluate.index("--out") + 1])
    if evaluation.is_file():
        e = json.loads(evaluation.read_text())
        measuring = e["total_seconds"] - e["generation_seconds"]
        print(
            f"\nevaluation ({shlex.join(steps['evaluate'])}): {e['clips']} clips, "
            f"{e['total_seconds']:.0f} s = {e['generation_seconds']:.0f} s generating + "
            f"{measuring:.0f} s reading and measuring"
        )


if __name__ == "__main__":
    main()
