"""Compiling for a real TPU slice on this CPU-only machine (libtpu, `pip install -e .[tpu]`):
the tiny training step over 4 v5e chips, one clip's sampling loop on one chip, and the splash
attention kernel, each in a fresh process (libtpu is set up before jax starts)."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None,
    reason="libtpu is not installed (pip install -e .[tpu]): nothing compiles for TPU",
)


def run(args: list[str], tmp_path: Path) -> str:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
def test_tiny_training_step_compiles_for_v5e(tmp_path):
    """The per-chip table of the tiny stage 2 step, FSDP over a v5e 2x2 slice (about 4
    CPU-minutes: libtpu's compiler, not the model's size, takes the time)."""
    out = tmp_path / "table.md"
    config = "configs/train/tiny.yaml"  # stage 2: bench_tpu's default --stage
    run(["bench/bench_tpu.py", "--topology", "v5e:2x2", "--config", config, "--out", out], tmp_path)
    table = out.read_text()
    assert "mesh data=1, fsdp=4, tensor=1" in table
    peak = float(re.search(r"\*\*peak HBM\*\* \| \*\*([0-9.]+)\*\* of 16", table).group(1))
    flops = float(re.search(r"FLOPs per step per chip: ([0-9.e+-]+) TFLOP", table).group(1))
    assert 0 < peak < 1 and flops > 0


@pytest.mark.slow
def test_tiny_generation_compiles_for_one_v5e_chip(tmp_path):
    """The tiny model's sampling loop for one clip (two guidance passes), one v5e chip."""
    config = "configs/train/tiny.yaml"
    text = run(
        ["bench/bench_tpu.py", "--topology", "v5e:2x2", "--generate", "--config", config], tmp_path
    )
    assert "generation: one clip's sampling loop" in text and "one chip" in text
    assert re.search(r"FLOPs per clip per chip: [0-9.]+(e-?\d+)? TFLOP", text)


def test_splash_kernel_compiles_for_tpu(tmp_path):
    """The Pallas kernel lowers through Mosaic (forward and gradient), with a key mask and
    lengths that are not multiples of its blocks; under a 2x2 mesh it runs per chip."""
    code = """
import sys; sys.path.insert(0, "bench"); import bench_tpu; bench_tpu.tpu_environment("v5e:2x2")
import jax, jax.numpy as jnp
from jax.experimental import topologies
from emo_jax.nn.attention_splash import splash_attention
devices = list(topologies.get_topology_desc("v5e:2x2", "tpu").devices)
device = devices[0]
s = jax.sharding.SingleDeviceSharding(device)
q = jax.ShapeDtypeStruct((2, 200, 8, 40), jnp.bfloat16, sharding=s)
k = jax.ShapeDtypeStruct((2, 300, 8, 40), jnp.bfloat16, sharding=s)
m = jax.ShapeDtypeStruct((2, 300), jnp.bool_, sharding=s)
loss = lambda q, k, m: splash_attention(q, k, k, m).astype(jnp.float32).sum()
c = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(q, k, m).compile()
print("compiled", c.as_text().count("tpu_custom_call"))
from emo_jax.config import ParallelConfig
from emo_jax.parallel.mesh import make_mesh
mesh = make_mesh(ParallelConfig(data=2, fsdp=1, tensor=2), devices)
with jax.set_mesh(mesh):  # per chip: 1 of 2 samples, 4 of 8 heads
    shard = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    q, k, m = (jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=shard) for a in (q, k, m))
    c = jax.jit(loss).lower(q, k, m).compile()
print("sharded", c.as_text().count("tpu_custom_call"))
"""
    out = run(["-c", code], tmp_path).split()
    assert out[:2] == ["compiled", "3"] and out[2] == "sharded"  # forward, dq, dkv kernels
    assert int(out[3]) >= 1
