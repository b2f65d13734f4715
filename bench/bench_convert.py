"""Conversion benchmark: time and peak memory of `emo-jax convert` at full size, and the
bit-exact Orbax -> export -> Orbax round trip of the whole EMO model.

    python bench/bench_convert.py [--emo] [--workdir DIR]

Weights are random (the shapes of SD1.5 / the EMO config), written straight from their
shapes, so the benchmark needs no download. Each conversion runs in a fresh process; its
peak RSS is that process's maximum resident set size.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict

from emo_jax.checkpoint.bundle import save_bundle
from emo_jax.config import load_config
from emo_jax.files import write_json
from emo_jax.models.emo import EMOModel
from emo_jax.models.emo import abstract_params as emo_abstract
from emo_jax.models.unet import UNET_FORMAT
from emo_jax.models.vae import VAE_FORMAT
from emo_jax.weights.convert import torch_shapes
from emo_jax.weights.io import Entry, save_safetensors
from emo_jax.weights.pretrained import abstract_params, config_json

GIB = 1024**3


CHILD = (
    "import resource, sys; from emo_jax.cli import main; code = main(sys.argv[1:]); "
    "print('PEAK_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); "
    "sys.exit(code)"
)


def run(args: list[str]) -> tuple[float, float]:
    """(seconds, peak RSS GiB) of one `emo-jax` run in its own process."""
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", CHILD, *args],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    seconds = time.perf_counter() - t0
    peak = int(done.stderr.rsplit("PEAK_KIB", 1)[1].split()[0])
    return seconds, peak * 1024 / GIB


def random_unet_folder(folder: Path) -> float:
    """A full-size SD1.5 UNet folder of random weights; returns its size in GiB."""
    cfg = load_config("configs/sd15.yaml").model.unet
    shapes = torch_shapes(abstract_params(UNET_FORMAT.build(cfg, None), UNET_FORMAT, cfg))
    rng = np.random.default_rng(0)
    entries = [
        Entry(k, s, np.dtype(np.float32), lambda s=s: rng.standard_normal(s, np.float32))
        for k, s in shapes.items()
    ]
    folder.mkdir(parents=True)
    write_json(config_json(cfg, UNET_FORMAT), folder / "config.json")
    save_safetensors(entries, folder / "diffusion_pytorch_model.safetensors")
    return sum(int(np.prod(s)) for s in shapes.values()) * 4 / GIB


def digest(tree) -> dict:
    return {
        "/".join(k): hashlib.sha1(np.ascontiguousarray(v).tobytes()).hexdigest()
        for k, v in flatten_dict(tree).items()
    }


def random_emo_bundle(folder: Path) -> tuple[float, dict]:
    """A full-size EMO bundle of random weights; (GiB, per-tensor digests)."""
    config = load_config("configs/model/emo_sd15.yaml")
    rng = np.random.default_rng(0)

    def draw(
        a,
    ):  # one numpy tensor at a time, kept as a jax array (Orbax saves those without a copy)
        return jnp.asarray(rng.standard_normal(a.shape, np.float32))

    emo = jax.tree_util.tree_map(draw, emo_abstract(EMOModel(config.model)))
    vae_cfg = config.model.vae
    vae = jax.tree_util.tree_map(
        draw, abstract_params(VAE_FORMAT.build(vae_cfg, None), VAE_FORMAT, vae_cfg)
    )
    params = {"emo": emo, "vae": vae}
    size = sum(x.size for x in jax.tree_util.tree_leaves(params)) * 4 / GIB
    save_bundle(folder, config, params)
    return size, digest(params)  # params are freed on return: the conversions run alone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--emo", action="store_true", help="also the whole EMO model (about 9 GiB of weights)"
    )
    parser.add_argument("--workdir", help="scratch folder (default: a temp dir)")
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_convert_"))
    rows = []
    size = random_unet_folder(work / "unet")
    secs, peak = run(["convert", "--src", str(work / "unet"), "--dst", str(work / "unet_orbax")])
    rows.append(("SD1.5 UNet diffusers -> orbax", size, secs, peak))
    secs, peak = run(
        ["convert", "--src", str(work / "unet_orbax"), "--dst", str(work / "unet_back")]
    )
    rows.append(("SD1.5 UNet orbax -> diffusers", size, secs, peak))
    exact = None
    if args.emo:
        size, before = random_emo_bundle(work / "emo")
        jax.clear_caches()
        secs, peak = run(["convert", "--src", str(work / "emo"), "--dst", str(work / "emo_export")])
        rows.append(("EMO bundle -> exported folder", size, secs, peak))
        secs, peak = run(
            ["convert", "--src", str(work / "emo_export"), "--dst", str(work / "emo_back")]
        )
        rows.append(("exported folder -> EMO bundle", size, secs, peak))
        import orbax.checkpoint as ocp

        with ocp.StandardCheckpointer() as ckptr:
            exact = digest(ckptr.restore((work / "emo_back" / "params").absolute())) == before
    print(
        f"{'conversion':<34}{'weights GiB':>12}{'seconds':>10}{'peak RSS GiB':>14}{'RSS / weights':>15}"
    )
    for name, size, secs, peak in rows:
        print(f"{name:<34}{size:>12.2f}{secs:>10.1f}{peak:>14.2f}{peak / size:>15.2f}")
    if exact is not None:
        print(f"full-size EMO round trip bit-exact: {exact}")
    print(json.dumps({"workdir": str(work)}))


if __name__ == "__main__":
    main()
