"""Generation's compiled clip function: the guidance scales are its arguments (a new scale does
not recompile), and `devices` > 1 splits its guided batch (passes x frames) over a mesh of fake
CPU devices (in a subprocess: the device count is fixed when JAX starts) with the same result
as one device. The tiny config with random weights, one clip of 8 frames at 64 px, one step."""

import json
import os
import subprocess
import sys
import tempfile
import textwrap
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emo_jax.cli import main
from emo_jax.diffusion import Guidance
from emo_jax.pipeline import EMOPipeline, RandomWeightsWarning
from emo_jax.pipeline.loading import TINY_CONFIG

LOWERING = "/jax/core/compile/jaxpr_to_mlir_module_duration"  # once per program compiled
ROOT = Path(__file__).resolve().parents[1]
FACE = ROOT / "emo_jax" / "assets" / "face.png"
WAVE = (0.5 * np.sin(np.arange(4800) / 7)).astype(np.float32)  # 0.3 s at 16 kHz: 8 frames

# Runs in a subprocess with 4 fake CPU devices: one clip's latents (2 guidance passes x 8 frames)
# on 1, 2 (the passes split) and 4 devices (passes and frames), whether the split program
# exchanges data between devices, and the clip's decoded frames (split over the devices).
SPLIT = """
import json, sys, warnings
import jax, numpy as np
jax.config.update("jax_compilation_cache_dir", sys.argv[2])
from emo_jax.pipeline import EMOPipeline
from emo_jax.pipeline.loading import TINY_CONFIG
from tests.test_generate_devices import clip_inputs
warnings.simplefilter("ignore")
pipe = EMOPipeline.from_pretrained(None, TINY_CONFIG)
out = {}
for devices in (1, 2, 4):
    fns, args = clip_inputs(pipe, devices=devices)
    latents = fns.sample(*args)
    hlo = fns.sample.lower(*args).compile().as_text() if devices > 1 else ""
    collectives = any(op in hlo for op in ("all-gather", "all-reduce", "all-to-all"))
    frames = fns.decode(fns.place(pipe.model.params["vae"]), latents[0])
    out[devices] = {
        "latents": np.asarray(latents).tolist(),
        "collectives": collectives,
        "frames": np.asarray(frames).tolist(),
        "frames_split": len({str(s.index) for s in frames.addressable_shards}) == devices,
    }
json.dump(out, open(sys.argv[1], "w"))
"""


def clip_inputs(pipe: EMOPipeline, seed: int = 0, **options) -> tuple:
    """The clip function of a one-clip job and its arguments: random reference features (no
    ReferenceNet to compile), the job's audio windows, mask, speed, key and guidance."""
    job = pipe.prepare(FACE, (WAVE, 16000), resolution=64, steps=1, seed=seed, **options)
    fns = pipe.functions(job)
    emo = fns.place(pipe.model.params["emo"])
    latent = jax.ShapeDtypeStruct((1, 8, 8, 4), jnp.float32)
    shapes = jax.eval_shape(fns.reference, emo, latent)
    leaves, tree = jax.tree_util.tree_flatten(shapes)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    features = tree.unflatten([jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])
    audio = jnp.asarray(next(job.clip_audio()))
    mask, speed = jnp.asarray(job.reference.mask[None]), jnp.asarray(job.speed[None, :8])
    return fns, (emo, features, audio, mask, speed, jax.random.key(seed), job.guidance)


@pytest.fixture(scope="module")
def pipe():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        return EMOPipeline.from_pretrained(None, TINY_CONFIG)


@pytest.mark.slow  # ~30 s on 2 busy cores: one compile of the clip program
def test_new_guidance_scale_reuses_the_compiled_clip(pipe):
    """Three scales, one compilation; one DDIM step (eta 0, epsilon) is affine in the guided
    output u + s (c - u), so the latents at s = 4 follow from those at 2 and 3 exactly as a
    constant scale would give them: the scale reaches the program as a value."""
    runs, lowered = {}, []

    def count(event: str, seconds: float, **_) -> None:
        lowered.extend([event] if event == LOWERING else [])

    for scale in (2.0, 3.0, 4.0):
        fns, args = clip_inputs(pipe, guidance_scale=scale)
        runs[scale] = np.asarray(fns.sample(*args))
        if scale == 2.0:  # compiled: count every program lowered from now on
            jax.monitoring.register_event_duration_secs_listener(count)
    jax.monitoring.unregister_event_duration_listener(count)
    assert lowered == [] and fns.sample._cache_size() == 1
    assert args[-1] == Guidance(4.0) and args[-1].num_passes == 2
    step = runs[3.0] - runs[2.0]
    assert np.abs(step).max() > 1e-3  # the scale changes the clip
    np.testing.assert_allclose(runs[4.0], runs[3.0] + step, atol=1e-5 * np.abs(runs[4.0]).max())


@pytest.mark.slow  # ~90 s on 2 busy cores: the clip program compiles for 1, 2 and 4 devices
def test_clip_on_2_and_4_devices_equals_one_device(tmp_path):
    result = tmp_path / "latents.json"
    cache = Path(tempfile.gettempdir()) / "emo_jax_jit_cache"  # conftest's
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SPLIT), str(result), str(cache)],
        cwd=ROOT,
        env=env,
        check=True,
        timeout=600,
    )
    out = json.loads(result.read_text())
    one = np.array(out["1"]["latents"])
    for devices in ("2", "4"):
        assert out[devices]["collectives"], f"{devices} devices: nothing split"
        latents = np.array(out[devices]["latents"])
        np.testing.assert_allclose(latents, one, atol=1e-5 * np.abs(one).max())
        assert out[devices]["frames_split"], f"{devices} devices: the decode is not split"
        frames = np.array(out[devices]["frames"], np.int16)
        assert np.abs(frames - np.array(out["1"]["frames"], np.int16)).max() <= 1


def test_more_devices_than_there_are_exit_2(tmp_path, capsys):
    """One line, before anything is loaded or written."""
    out = tmp_path / "video.mp4"
    args = ["generate", "--config", str(TINY_CONFIG), "--out", str(out), "--devices", "64"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        err[-1]
        == f"emo-jax generate: error: devices: 64 asked for, {jax.local_device_count()} cpu device(s) available"
    )
    assert not out.exists()
