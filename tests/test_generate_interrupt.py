"""Ctrl-C (SIGINT) and SIGTERM stop `emo-jax generate` in every phase - start-up, model loading
(Orbax's threads), compiling, sampling, writing - with one line, exit 130 / 143, and nothing
left where the outputs go. Each case is a real process (the signal must reach it as it would
from a terminal); it is sent when the phase announces itself on stderr."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import soundfile

from emo_jax.interrupt import PAUSE_ENV

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "emo_jax" / "assets"
BUILT_IN = ["--steps", "2", "--no-progress"]  # the built-in model: read, not initialised


@pytest.fixture(scope="module")
def audio(tmp_path_factory) -> Path:
    """0.4 s of the shipped sentence: 10 frames, two clips of the built-in model."""
    wave, rate = soundfile.read(ASSETS / "speech.wav", dtype="float32")
    path = tmp_path_factory.mktemp("audio") / "short.wav"
    soundfile.write(path, wave[: int(0.4 * rate)], rate)
    return path


@pytest.fixture(scope="module")
def jit_cache(tmp_path_factory) -> Path:
    """A compilation cache the sampling and writing cases share (the second compiles less)."""
    return tmp_path_factory.mktemp("jit_cache")


def stop(audio, out: Path, marker: str, sig: int, env: dict) -> tuple:
    """Starts generate, sends `sig` when a stderr line contains `marker`; (exit code, stderr)."""
    out.mkdir()
    argv = [sys.executable, "-m", "emo_jax.cli", "generate", "--image", str(ASSETS / "face.png")]
    argv += ["--audio", str(audio), "--out", str(out / "v.mp4"), "--frames-dir", str(out / "f")]
    env = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    proc = subprocess.Popen(argv + BUILT_IN, stderr=subprocess.PIPE, text=True, env=env)
    lines = []
    for line in proc.stderr:
        lines.append(line.rstrip("\n"))
        if marker in line:
            time.sleep(0.2)  # into the phase
            proc.send_signal(sig)
            break
    rest = proc.stderr.read()
    code = proc.wait(timeout=120)
    return code, lines + rest.splitlines()


MARKERS = {  # phase: (the stderr line that starts it, pause there?)
    "start": ("paused at start", True),
    "load": ("loading built-in default model", False),
    "compile": ("the first clip compiles the model", False),
    "sample": ("paused at sample", True),
    "write": ("paused at write", True),
}
INT, TERM = signal.SIGINT, signal.SIGTERM


@pytest.mark.parametrize(
    ("phase", "sig"),
    [
        ("start", INT),
        ("start", TERM),
        ("load", INT),
        ("compile", INT),
        pytest.param("sample", INT, marks=pytest.mark.slow),
        pytest.param("write", TERM, marks=pytest.mark.slow),
    ],
    ids=["start-INT", "start-TERM", "load-INT", "compile-INT", "sample-INT", "write-TERM"],
)
def test_a_signal_in_any_phase_stops_cleanly(tmp_path, audio, jit_cache, phase, sig):
    marker, pause = MARKERS[phase]
    env = {}
    if phase in ("sample", "write"):
        env = {"JAX_COMPILATION_CACHE_DIR": str(jit_cache)}
    if pause:
        env[PAUSE_ENV] = phase
    code, err = stop(audio, tmp_path / "out", marker, sig, env)
    word = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated"}[sig]
    assert code == {signal.SIGINT: 130, signal.SIGTERM: 143}[sig], err
    assert err[-1] == f"emo-jax generate: {word}", err
    assert sum(word in line for line in err) == 1 and not any("Traceback" in x for x in err), err
    assert list((tmp_path / "out").iterdir()) == []  # no mp4, no frames, no temporary file
    if phase == "load":
        assert not any("compiles the model" in line for line in err), err  # it was loading
