"""Conversion benchmark: time and peak memory of `emo-jax convert` at full size, and the
bit-exact Orbax -> export -> Orbax round trip of the whole EMO model.

    python bench/bench_convert.py [--emo] [--workdir DIR]
    python bench/bench_convert.py --quick --emo     # seconds: the tiny config, in this process

Weights are random (the shapes of SD1.5 / the EMO config), written straight from their
shapes, so the benchmark needs no download. Each conversion runs in a fresh process; its
peak RSS is that process's maximum resident set size.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
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
REPO = Path(__file__).resolve().parents[1]
FULL_UNET, FULL_EMO = REPO / "configs/sd15.yaml", REPO / "configs/model/emo_sd15.yaml"
TINY = REPO / "configs/model/tiny.yaml"  # --quick: UNet and EMO


CHILD = (
    "import resource, sys; from emo_jax.cli import main; code = main(sys.argv[1:]); "
    "print('PEAK_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); "
    "sys.exit(code)"
)


def run(args: list[str], quick: bool = False) -> tuple[float, float]:
    """(seconds, peak RSS GiB) of one `emo-jax` run in its own process (quick: in this one,
    peak RSS so far)."""
    t0 = time.perf_counter()
    if quick:
        from emo_jax.cli import main

        assert main(args) == 0, args
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return time.perf_counter() - t0, peak * 1024 / GIB
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


def random_unet_folder(folder: Path, config: Path) -> float:
    """A UNet folder of random weights of `config`'s UNet; returns its size in GiB."""
    cfg = load_config(config).model.unet
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


def random_emo_bundle(folder: Path, config_path: Path) -> tuple[float, dict]:
    """An EMO bundle of random weights of `config_path`; (GiB, per-tensor digests)."""
    config = load_config(config_path)
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
    parser.add_argument(
        "--quick", action="store_true", help="seconds: the tiny config, in this process"
    )
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_convert_"))
    unet, emo, name = (TINY, TINY, "tiny") if args.quick else (FULL_UNET, FULL_EMO, "SD1.5")
    rows = []
    size = random_unet_folder(work / "unet", unet)
    secs, peak = run(
        ["convert", "--src", str(work / "unet"), "--dst", str(work / "unet_orbax")], args.quick
    )
    rows.append((f"{name} UNet diffusers -> orbax", size, secs, peak))
    secs, peak = run(
        ["convert", "--src", str(work / "unet_orbax"), "--dst", str(work / "unet_back")], args.quick
    )
    rows.append((f"{name} UNet orbax -> diffusers", size, secs, peak))
    exact = None
    if args.emo:
        size, before = random_emo_bundle(work / "emo", emo)
        if not args.quick:  # the conversions run alone (in this process: keep its caches)
            jax.clear_caches()
        secs, peak = run(
            ["convert", "--src", str(work / "emo"), "--dst", str(work / "emo_export")], args.quick
        )
        rows.append(("EMO bundle -> exported folder", size, secs, peak))
        secs, peak = run(
            ["convert", "--src", str(work / "emo_export"), "--dst", str(work / "emo_back")],
            args.quick,
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
        print(f"{name} EMO round trip bit-exact: {exact}")
    print(json.dumps({"workdir": str(work)}))


if __name__ == "__main__":
    main()
