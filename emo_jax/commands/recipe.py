"""`emo-jax recipe`: a YAML list of emo-jax commands run in order, resumable.

    state: runs/default/recipe.json     # what is done, with each step's wall time
    steps:
      corpus: synth --out data/default/videos --identities 160
      stage1: train --config configs/default/train.yaml --stage 1
      ...

A step is done once its command has returned 0; a re-run skips done steps (a step whose
command text changed runs again) and the interrupted one resumes as its own command does
(synth keeps finished clips, train restarts from its last checkpoint). A done step whose
`--config` now reads differently (the file or a `base:` it includes; of a stage file, the
`--stage` it runs) stops the recipe before anything runs: its output is stale, and a train step
would only resume its finished run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import sys
import time
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "recipe",
        help="run a recipe of emo-jax commands (e.g. configs/default/recipe.yaml), resumably",
    )
    p.add_argument("recipe", help="YAML file: state (JSON path) and steps (name: command)")
    p.add_argument("--dry-run", action="store_true", help="list the steps and which are done")
    p.set_defaults(func=run)


def load_recipe(path: str) -> tuple[Path, dict[str, list[str]]]:
    """(state file, {step name: argv}) of a recipe file."""
    from emo_jax.config import read_yaml
    from emo_jax.errors import InputError

    data = read_yaml(path, "recipe")
    steps = data.get("steps")
    if not isinstance(data.get("state"), str) or not isinstance(steps, dict) or not steps:
        raise InputError(f"{path}: needs 'state: FILE.json' and 'steps: {{name: command}}'")
    bad = [k for k, v in steps.items() if not isinstance(v, str) or not v.strip()]
    if bad:
        raise InputError(f"{path}: steps {bad} are not command lines")
    return Path(data["state"]), {str(k): shlex.split(v) for k, v in steps.items()}


def read_state(path: Path) -> dict:
    from emo_jax.errors import InputError

    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        raise InputError(f"{path}: not a recipe state file (invalid JSON)") from None


def config_of(argv: list[str]) -> str | None:
    """The `--config` file of a step's command line, or None."""
    return argv[argv.index("--config") + 1] if "--config" in argv[:-1] else None


def stage_of(argv: list[str]) -> list[str]:
    """The override that a step's `--stage N` makes (of a stage file), or none."""
    return [f"train.stage={argv[argv.index('--stage') + 1]}"] if "--stage" in argv[:-1] else []


def settings(argv: list[str]) -> str:
    """Digest of the settings a step's `--config` resolves to (with its `base:` files; of a
    stage file, its `--stage`); "" if it has none."""
    from emo_jax.config import resolve

    path = config_of(argv)
    if path is None:
        return ""
    data = resolve(path, stage_of(argv))
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run(args: argparse.Namespace) -> int:
    from emo_jax.cli import main
    from emo_jax.errors import InputError
    from emo_jax.files import write_json

    state_path, steps = load_recipe(args.recipe)
    state = read_state(state_path)
    done = lambda name: state.get(name, {}).get("command") == shlex.join(steps[name])  # noqa: E731
    for name, argv in steps.items():
        digest = settings(argv)
        if digest and done(name) and state[name].get("settings") != digest:
            raise InputError(
                f"{config_of(argv)}: changed since recipe step {name} ran with "
                f"it; restore it, or delete that step's output and its entry in {state_path}"
            )
    for i, (name, argv) in enumerate(steps.items(), 1):
        line = f"[{i}/{len(steps)}] {name}: emo-jax {shlex.join(argv)}"
        if done(name):
            print(f"emo-jax recipe: {line} (done in {state[name]['seconds']:.0f} s)")
            continue
        if args.dry_run:
            print(f"emo-jax recipe: {line}")
            continue
        print(f"emo-jax recipe: {line}", flush=True)
        t0 = time.perf_counter()
        code = main(argv)
        if code:
            print(f"emo-jax recipe: step {name} failed (exit {code})", file=sys.stderr)
            return code
        state[name] = {
            "command": shlex.join(argv),
            "settings": settings(argv),
            "seconds": time.perf_counter() - t0,
        }
        state_path.parent.mkdir(parents=True, exist_ok=True)
        write_json(state, state_path)
    if not args.dry_run:
        times = ", ".join(f"{k} {v['seconds']:.0f} s" for k, v in state.items() if k in steps)
        print(f"emo-jax recipe: all {len(steps)} steps done ({times}); state in {state_path}")
    return 0
