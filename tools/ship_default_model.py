"""Ships the model trained by a recipe (`emo-jax recipe RECIPE`) as the built-in default: copies
its bundle (the recipe's evaluate step's --checkpoint) to emo_jax/assets/default_model with a
card.json (what it is, what it was trained on, the recipe's wall times, its held-out evaluation
with standard errors, and its paired differences against the model it replaces), and draws
docs/default_model.png (a held-out clip: ground truth above, generated below).

Run from the repository root after the recipe, with the shipped model's evaluation on the same
clips (`emo-jax evaluate --data HELDOUT --out shipped.json`, before shipping):

    python tools/ship_default_model.py --recipe configs/v2/recipe.yaml --paired-with shipped.json
"""

from __future__ import annotations

import argparse
import shlex
import shutil
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SUMMARY = {  # card key -> (video, metric) of the evaluation
    "lip_sync": ("generated", "lip_sync"),
    "lip_sync_shuffled_audio": ("generated", "lip_sync_shuffled"),
    "lip_sync_reference_repeated": ("reference_repeated", "lip_sync"),
    "lip_sync_ground_truth": ("ground_truth", "lip_sync"),
    "lip_sync_ground_truth_autoencoded": ("autoencoded", "lip_sync"),
    "identity_psnr": ("generated", "identity_psnr"),
    "identity_ssim": ("generated", "identity_ssim"),
    "head_speed_spearman": ("generated", "head_speed_spearman"),
    "seam_ratio": ("generated", "seam_ratio"),
    "pause_opening": ("generated", "pause_opening"),
    "pause_opening_ground_truth": ("ground_truth", "pause_opening"),
    "pause_change": ("generated", "pause_change"),
    "pause_change_ground_truth": ("ground_truth", "pause_change"),
}


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def card(
    recipe: str, state: dict, evaluation: dict, parameters: int, previous: dict | None = None
) -> dict:
    """The model card from the recipe's state file and the evaluation JSON (and the replaced
    model's evaluation on the same clips, for paired differences)."""
    from emo_jax.eval import summary

    steps = {name: shlex.split(v["command"]) for name, v in state.items()}
    metrics, errors = evaluation["metrics"], evaluation["standard_errors"]
    paired = {}
    if previous is not None:
        paired = summary.paired(
            evaluation["per_clip"], "generated", previous["per_clip"], "generated",
            tuple(evaluation["speed_centers"]),
        )  # fmt: skip
    return {
        "name": "emo_jax default: a small EMO for drawn speaking faces, 96 px",
        "trained_on": (
            f"emo-jax synth speaking-face corpus (espeak-ng speech, drawn faces): "
            f"`emo-jax {shlex.join(steps['corpus'])}`"
        ),
        "not_for": "real photographs: it runs, but quality there needs real data and weights",
        "recipe": recipe,
        "parameters": parameters,
        "recipe_seconds": {k: round(v["seconds"]) for k, v in state.items()},
        "evaluation": {
            "data": f"`emo-jax {shlex.join(steps['heldout'])}` ({evaluation['clips']} clips)",
            **{  # None: undefined (the Pearson of a constant series, or no motion)
                key: _round(metrics[video][name]) for key, (video, name) in SUMMARY.items()
            },
            "standard_errors": {
                key: _round(errors[video][name]) for key, (video, name) in SUMMARY.items()
            },
            "paired": {
                what: {k: {n: _round(v) for n, v in d.items()} for k, d in pairs.items()}
                for what, pairs in evaluation["paired"].items()
            },
        },
        **(
            {
                "against_the_model_it_replaced": {
                    k: {n: _round(v) for n, v in d.items()} for k, d in paired.items()
                }
            }
            if paired
            else {}
        ),
    }


def strip(bundle: Path, heldout: Path, out: Path, frames: int = 8, seconds: float = 2.0) -> None:
    """Ground truth (top) and generated (bottom) frames of the first held-out clip."""
    import cv2
    from PIL import Image

    from emo_jax.eval.evaluate import find_clips, generate_clip, load_clip
    from emo_jax.pipeline import EMOPipeline

    pipe = EMOPipeline.from_pretrained(bundle)
    clip = load_clip(find_clips(heldout)[0], seconds)
    _, generated, truth, _, _ = generate_clip(pipe, clip, {})
    pick = np.linspace(0, len(generated) - 1, frames).round().astype(int)
    rows = [np.concatenate(list(video[pick]), axis=1) for video in (truth, generated)]
    image = np.concatenate(rows, axis=0)
    image = cv2.resize(image, None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(out, optimize=True)


def main() -> None:
    import jax

    from emo_jax.checkpoint.bundle import load_bundle
    from emo_jax.commands.recipe import load_recipe
    from emo_jax.files import atomic_folder, read_json, write_json
    from emo_jax.pipeline.loading import DEFAULT_MODEL

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", required=True, help="the recipe that trained the model")
    p.add_argument("--paired-with", help="the replaced model's evaluation on the same clips")
    p.add_argument("--strip", default=str(REPO / "docs" / "default_model.png"))
    args = p.parse_args()
    state_path, steps = load_recipe(args.recipe)
    evaluate = steps["evaluate"]
    bundle, heldout, results = (
        Path(evaluate[evaluate.index(flag) + 1]) for flag in ("--checkpoint", "--data", "--out")
    )
    _, params = load_bundle(bundle)
    count = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(params))
    previous = read_json(Path(args.paired_with)) if args.paired_with else None
    info = card(args.recipe, read_json(state_path), read_json(results), count, previous)
    with atomic_folder(DEFAULT_MODEL, overwrite=True) as tmp:
        shutil.copytree(bundle, tmp, dirs_exist_ok=True)
        write_json(info, tmp / "card.json")
    size = sum(f.stat().st_size for f in DEFAULT_MODEL.rglob("*") if f.is_file())
    print(f"{DEFAULT_MODEL}: {size / 2**20:.1f} MiB, {count:,} parameters")
    strip(DEFAULT_MODEL, heldout, Path(args.strip))
    print(f"{args.strip}: ground truth (top) and generated (bottom)")


if __name__ == "__main__":
    main()
