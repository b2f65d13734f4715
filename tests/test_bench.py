"""Every script in bench/ runs: its --quick mode (tiny configs, seconds), in this process (so
compiled functions are shared with the other tests), and bench_recipe.py on a made-up finished
recipe run. A benchmark that calls a renamed or removed function fails here."""

from __future__ import annotations

import json
import os
import re
import runpy
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"

# script -> (arguments, a pattern its output must hold)
QUICK = {
    "bench_audio.py": ([], r"\| wav2vec2 \| 1 s \| 25 \|"),
    "bench_convert.py": (["--emo"], r"EMO round trip bit-exact: True"),
    "bench_data.py": ([], r"32 +image +0 +0\.00 +\d"),
    "bench_eval.py": ([], r"lip sync \(Pearson\) .* undefined"),
    "bench_faces.py": (["--images", "1"], r'"haar": [\d.]+'),
    "bench_generate.py": ([], r"one guided step of a clip"),
    "bench_train.py": (["all"], r"peak \(compiled step\) +\d"),
    "bench_attention.py": (
        [],
        r"attention +forward temp MiB[\s\S]*\n +chunked +[\d.]+ +[\d.]+ +\d",
    ),
    "bench_hallo.py": (
        ["all"],
        r"(?s)round trip: bit-exact: True.*\| one guided step \|.*\| VAE decode of 16 frames \|",
    ),
    "bench_twin.py": (
        [],
        r"(?s)\| emo_jax \(jit\) \| [\d.]+ \|.*\| torch twin \| [\d.]+ \|.*"
        r"torch / emo_jax: [\d.]+x.*agree: True",
    ),
}
WITHOUT_QUICK = {  # script -> why, and what runs it instead
    "bench_recipe.py": "reads a finished recipe run: test_recipe_table_of_a_finished_run",
    "bench_tpu.py": "compiles for a TPU topology: needs libtpu (the tpu extra)",
}


def run_script(name: str, args: list[str], monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", [str(BENCH / name), *args])
    runpy.run_path(str(BENCH / name), run_name="__main__")


def test_every_script_has_a_quick_run():
    scripts = sorted(p.name for p in BENCH.glob("*.py"))
    assert scripts == sorted([*QUICK, *WITHOUT_QUICK]), "a bench script needs --quick here"


@pytest.mark.parametrize("name", sorted(QUICK))
def test_quick(name, tmp_path, monkeypatch, capsys):
    args, expected = QUICK[name]
    if name in ("bench_data.py", "bench_eval.py"):
        args = [*args, "--cache", str(tmp_path)]
    if name in ("bench_convert.py", "bench_hallo.py"):
        args = [*args, "--workdir", str(tmp_path / "work")]
    run_script(name, [*args, "--quick"], monkeypatch)
    out = capsys.readouterr().out
    assert re.search(expected, out, re.M), out


def test_recipe_table_of_a_finished_run(tmp_path, monkeypatch, capsys):
    """bench_recipe.py reads the state file, the stages' metrics and eval logs and the
    evaluation the way `emo-jax recipe` and training write them."""
    monkeypatch.chdir(tmp_path)
    os.symlink(REPO / "configs", tmp_path / "configs")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "state: runs/r/recipe.json\nsteps:\n"
        "  stage1: train --config configs/train/tiny.yaml --stage 1\n"
        "  evaluate: evaluate --data d --out runs/r/evaluation.json\n"
    )
    run = tmp_path / "runs" / "tiny" / "stage1"  # tiny.yaml's stage 1 train.out_dir
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": i, "seconds": s}) + "\n" for i, s in ((2, 0.5), (3, 0.7)))
    )
    (run / "eval.jsonl").write_text(json.dumps({"step": 4000, "loss": 0.597}) + "\n")
    state = {"stage1": {"seconds": 384.0}, "evaluate": {"seconds": 262.0}}
    (tmp_path / "runs" / "r" / "recipe.json").parent.mkdir(parents=True)
    (tmp_path / "runs" / "r" / "recipe.json").write_text(json.dumps(state))
    evaluation = {"clips": 8, "total_seconds": 262.0, "generation_seconds": 192.0}
    (tmp_path / "runs" / "r" / "evaluation.json").write_text(json.dumps(evaluation))
    run_script("bench_recipe.py", ["--recipe", str(recipe)], monkeypatch)
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["stage1", "384", "4000", "0.600", "1", "0.5970"]
    assert lines[3].split()[:2] == ["total", "646"]
    assert "8 clips, 262 s = 192 s generating + 70 s reading and measuring" in lines[-1]
