"""Ships the model trained by `emo-jax recipe configs/default/recipe.yaml` as the built-in
default: copies its bundle to emo_jax/assets/default_model with a card.json (what it is, what it
was trained on, the recipe's wall times, its held-out evaluation), and draws
docs/default_model.png (a held-out clip: ground truth above, generated below).

Run from the repository root after the recipe: python tools/ship_default_model.py
"""

from __future__ import annotations

import argparse
import shlex
import shutil
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RECIPE = "configs/default/recipe.yaml"
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
}


def card(state: dict, evaluation: dict, parameters: int) -> dict:
    """The model card from the recipe's state file and the evaluation JSON."""
    steps = {name: shlex.split(v["command"]) for name, v in state.items()}
    metrics = evaluation["metrics"]
    return {
        "name": "emo_jax default: a small EMO for drawn speaking faces, 96 px",
        "trained_on": (
            f"emo-jax synth speaking-face corpus (espeak-ng speech, drawn faces): "
            f"`emo-jax {shlex.join(steps['corpus'])}`"
        ),
        "not_for": "real photographs: it runs, but quality there needs real data and weights",
        "recipe": RECIPE,
        "parameters": parameters,
        "recipe_seconds": {k: round(v["seconds"]) for k, v in state.items()},
        "evaluation": {
            "data": f"`emo-jax {shlex.join(steps['heldout'])}` ({evaluation['clips']} clips)",
            **{  # None: undefined (the Pearson of a constant series, or no motion)
                key: None if metrics[video][name] is None else round(metrics[video][name], 3)
                for key, (video, name) in SUMMARY.items()
            },
        },
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
    p.add_argument("--runs", default="runs/default", help="the recipe's run folder")
    p.add_argument("--heldout", default="data/default/heldout", help="held-out corpus")
    p.add_argument("--strip", default=str(REPO / "docs" / "default_model.png"))
    args = p.parse_args()
    runs = Path(args.runs)
    state_path, _ = load_recipe(RECIPE)
    bundle = runs / "stage3" / "bundle"
    _, params = load_bundle(bundle)
    count = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(params))
    info = card(read_json(state_path), read_json(runs / "evaluation.json"), count)
    with atomic_folder(DEFAULT_MODEL, overwrite=True) as tmp:
        shutil.copytree(bundle, tmp, dirs_exist_ok=True)
        write_json(info, tmp / "card.json")
    size = sum(f.stat().st_size for f in DEFAULT_MODEL.rglob("*") if f.is_file())
    print(f"{DEFAULT_MODEL}: {size / 2**20:.1f} MiB, {count:,} parameters")
    strip(DEFAULT_MODEL, Path(args.heldout), Path(args.strip))
    print(f"{args.strip}: ground truth (top) and generated (bottom)")


if __name__ == "__main__":
    main()
