"""Training as a user runs it (the CLI, in subprocesses): killed and resumed, on 8 fake devices
with three mesh shapes, and as two processes; each must reproduce one uninterrupted
single-device run, step for step."""

import json
import signal
import socket
import subprocess
import sys

import av
import numpy as np
import pytest
import train_support as ts

from emo_jax.checkpoint.manager import Checkpoints
from emo_jax.config import load_config
from emo_jax.train.metrics import step_seconds


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return ts.make_corpus(tmp_path_factory.getbasetemp() / "train_corpus")


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory):
    """6 steps on one device, checkpoints at 2, 4, 6 with an evaluation loss, a sample video
    at 6."""
    run = tmp_path_factory.mktemp("reference")
    ts.run_train(ts.overrides(corpus, run, "train.sample_every=6", "train.eval_batches=1"))
    return run


def _assert_close(got: dict, want: dict, moved_from: dict | None = None, rtol: float = 1e-3):
    """Per tensor, the difference is small against the tensor's size (or, with `moved_from`,
    against how far training moved it): float32 reduction order only."""
    assert got.keys() == want.keys()
    worst = 0.0
    for k, w in want.items():
        diff = float(np.abs(got[k] - w).max())
        ref = w if moved_from is None else w - moved_from[k]
        worst = max(worst, diff / max(float(np.abs(ref).max()), 1e-6))
    assert worst < rtol, worst


def test_reference_run_writes_checkpoints_sample_bundle_and_logs(corpus, reference):
    assert Checkpoints(reference / "checkpoints").all_steps() == [2, 4, 6]
    rows = ts.metrics(reference)
    assert sorted(rows) == list(range(1, 7)) and all(r["ok"] == 1.0 for r in rows.values())
    assert all(np.isfinite(r["loss"]) and r["lr"] == pytest.approx(1e-3) for r in rows.values())
    seconds = step_seconds(reference)
    assert len(seconds) == 5 and (seconds > 0).all()  # steps 2..6, one after another
    with av.open(str(reference / "samples" / "step_0000006.mp4")) as c:
        video = c.streams.video[0]
        assert (video.frames, video.width, video.height) == (4, 96, 32)
        assert len(c.streams.audio) == 1
    evals = [json.loads(line) for line in (reference / "eval.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [0, 2, 4, 6] and evals[-1]["loss"] < evals[0]["loss"]
    # the bundle names the face back end the corpus was cut with, not the config's "auto"
    cut_with = json.loads((corpus / "manifest.json").read_text())["settings"]["detector"]
    assert load_config(reference / "bundle" / "config.yaml").data.detector == cut_with != "auto"
    assert list((reference / "tb").glob("events.out.tfevents.*"))


def test_sigkill_mid_training_resumes_from_last_complete_checkpoint(corpus, reference, tmp_path):
    run = tmp_path / "killed"
    proc = subprocess.Popen(
        ts.train_command(ts.overrides(corpus, run)),
        env=ts.env(),
        cwd=ts.REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    log = []
    for line in proc.stdout:
        log.append(line)
        if "step 4: saving checkpoint" in line:  # the async write of step 4 has just begun
            proc.send_signal(signal.SIGKILL)
            break
    assert proc.wait(timeout=60) == -signal.SIGKILL, "".join(log)[-3000:]
    complete = Checkpoints(run / "checkpoints").all_steps()
    assert complete and max(complete) in (2, 4), complete
    # A save cut short later than the last complete one: a temporary step folder.
    partial = run / "checkpoints" / "6.orbax-checkpoint-tmp-1700000000000000"
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "_METADATA").write_text("{truncated")
    assert Checkpoints(run / "checkpoints").latest_step() == max(complete)

    proc = ts.run_train(ts.overrides(corpus, run))
    assert f"resumed from {run / 'checkpoints'}/{max(complete)}" in proc.stdout + proc.stderr
    got, want = ts.metrics(run), ts.metrics(reference)
    for step in range(max(complete) + 1, 7):
        assert got[step]["batch"] == want[step]["batch"], step  # the exact next batch
        assert got[step]["loss"] == want[step]["loss"], step
    assert not partial.exists()
    got, want = ts.checkpoint_params(run, 6), ts.checkpoint_params(reference, 6)
    _assert_close(got, want, ts.checkpoint_params(reference, 2), rtol=1e-6)


# Slow (about 3 CPU-minutes: three 8-device runs); `python -m pytest -m slow` runs it.
@pytest.mark.slow
def test_meshes_8x1_2x4_1x8_match_one_device(corpus, reference, tmp_path):
    out = tmp_path / "meshes.json"
    proc = subprocess.run(
        [sys.executable, ts.__file__, "meshes", str(out), str(corpus)],
        env=ts.env(devices=8),
        cwd=ts.REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    weights = np.load(out.with_suffix(".npz"))
    want = ts.metrics(reference)
    ref_weights = ts.checkpoint_params(reference, 2)

    def of(mesh: str) -> dict:
        return {k.split(":", 1)[1]: weights[k] for k in weights.files if k.startswith(mesh + ":")}

    init = of("init")
    expected_share = {"8x1": 1.0, "2x4": 1 / 4, "1x8": 1 / 8}
    for mesh, r in report.items():
        for step, loss in r["losses"].items():
            assert loss == pytest.approx(want[int(step)]["loss"], rel=1e-5), (mesh, step)
        ts.assert_trained_alike(of(mesh), ref_weights, init)
        share = expected_share[mesh]
        assert all(share <= s < share * 1.1 for s in r["share"]), (mesh, r["share"])


# Slow (about 2 CPU-minutes each: two training processes); a gradient that misses one
# process's rows fails it (the step-2 loss, then the weights).
@pytest.mark.slow
@pytest.mark.parametrize("mesh", ["data", "fsdp"])
def test_two_processes_match_one(mesh, corpus, reference, tmp_path):
    """Two processes of one device each: the batch split between them (data), or the batch,
    params, gradients and Adam moments (fsdp)."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    run = tmp_path / "two"
    data, fsdp = {"data": (2, 1), "fsdp": (1, 2)}[mesh]
    args = ts.overrides(corpus, run, "train.steps=2", f"parallel.data={data}")
    args.append(f"parallel.fsdp={fsdp}")
    procs = [
        subprocess.Popen(
            ts.train_command(
                [
                    *args,
                    "--coordinator",
                    f"localhost:{port}",
                    "--num-processes",
                    "2",
                    "--process-id",
                    str(i),
                ]
            ),
            env=ts.env(),
            cwd=ts.REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    got, want = ts.metrics(run), ts.metrics(reference)
    assert sorted(got) == [1, 2]
    for step in (1, 2):
        assert got[step]["loss"] == pytest.approx(want[step]["loss"], rel=1e-5)
    init = ts.initial_weights(load_config(ts.CONFIG, args))
    ts.assert_trained_alike(ts.checkpoint_params(run, 2), ts.checkpoint_params(reference, 2), init)
