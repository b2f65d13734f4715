"""Audio features for long audio: time and peak memory, per encoder and length.

Each case runs in a fresh process (peak RSS is per process): model load, a 1 s warm-up (jit
compile), then the features of a synthetic waveform streamed to an .npy file, as
`emo-jax audio-features` does. wav2vec2 is full-size wav2vec2-base with random weights
(speed and memory do not depend on the values; nothing is downloaded).

    python bench/bench_audio.py                     # mel and wav2vec2-base, 60 s and 10 min
    python bench/bench_audio.py --seconds 60 --encoders mel
    python bench/bench_audio.py --quick             # seconds: 1 s, a 2-layer wav2vec2

--quick: 1 s of audio, a wav2vec2 of 2 small layers, each case in this process (a check that
the benchmark runs, not a measurement).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TINY_WAV2VEC2 = {  # --quick
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "conv_dim": (32,) * 7,
    "num_conv_pos_embeddings": 16,
    "num_conv_pos_embedding_groups": 2,
}


def make_wav2vec2(folder: Path, sizes: dict) -> None:
    """A random wav2vec2 folder: wav2vec2-base's architecture with `sizes` changed."""
    import jax

    from emo_jax.config import Wav2Vec2Config
    from emo_jax.models.wav2vec2 import WAV2VEC2_FORMAT, Wav2Vec2Model
    from emo_jax.weights import pretrained

    cfg = Wav2Vec2Config(**sizes)
    module = WAV2VEC2_FORMAT.build(cfg, None)
    params = pretrained.init_params(module, WAV2VEC2_FORMAT, cfg, jax.random.key(0))
    Wav2Vec2Model.save_pretrained(params, cfg, folder)


def rss_mib() -> float:
    """Peak resident memory of this process (VmHWM: unlike ru_maxrss, reset by exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def case(encoder: str, seconds: float, model: str, chunk: float, out: Path) -> dict:
    """Runs in the child process; returns the measurements."""
    import numpy as np

    from emo_jax.audio.features import AudioFeatures
    from emo_jax.config import AudioConfig

    cfg = AudioConfig(encoder=encoder, wav2vec2_path=model, chunk_seconds=chunk)
    t0 = time.perf_counter()
    features = AudioFeatures(cfg)
    features(np.random.default_rng(0).standard_normal(16000).astype(np.float32))
    t_load = time.perf_counter() - t0
    rss_loaded = rss_mib()
    rng = np.random.default_rng(1)
    wave = features.prepare(rng.standard_normal(int(seconds * 16000)).astype(np.float32))
    t0 = time.perf_counter()
    shape = features.write(wave, out)
    t_run = time.perf_counter() - t0
    return {
        "load_s": t_load,
        "run_s": t_run,
        "rss_loaded_mib": rss_loaded,
        "rss_peak_mib": rss_mib(),
        "shape": list(shape),
        "file_mib": out.stat().st_size / 2**20,
    }


def run_child(encoder: str, seconds: float, model: str, chunk: float, out: Path) -> dict:
    """`case` in a fresh process (its own peak RSS)."""
    child = json.dumps([encoder, seconds, model, str(out)])
    cmd = [sys.executable, __file__, "--chunk-seconds", str(chunk), "--child", child]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, nargs="+", default=[60, 600])
    p.add_argument("--encoders", nargs="+", default=["mel", "wav2vec2"])
    p.add_argument("--chunk-seconds", type=float, default=20.0)
    p.add_argument("--quick", action="store_true", help="seconds: see above")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        encoder, seconds, model, out = json.loads(args.child)
        print(json.dumps(case(encoder, seconds, model, args.chunk_seconds, Path(out))))
        return
    if args.quick:
        args.seconds, args.chunk_seconds = [1.0], 0.5
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "wav2vec2-base"
        if "wav2vec2" in args.encoders:
            make_wav2vec2(model, TINY_WAV2VEC2 if args.quick else {})
        print(f"chunk_seconds={args.chunk_seconds:g}; 2 CPU cores; times exclude the warm-up")
        head = ("encoder", "audio", "frames", "load+jit s", "run s", "x realtime")
        head += ("RSS loaded MiB", "RSS peak MiB", ".npy MiB")
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for encoder in args.encoders:
            for seconds in args.seconds:
                out = Path(tmp) / "features.npy"
                if args.quick:
                    r = case(encoder, seconds, str(model), args.chunk_seconds, out)
                else:
                    r = run_child(encoder, seconds, str(model), args.chunk_seconds, out)
                out.unlink()
                row = (
                    encoder,
                    f"{seconds:g} s",
                    r["shape"][0],
                    f"{r['load_s']:.1f}",
                    f"{r['run_s']:.1f}",
                    f"{seconds / r['run_s']:.2f}",
                    f"{r['rss_loaded_mib']:.0f}",
                    f"{r['rss_peak_mib']:.0f}",
                    f"{r['file_mib']:.0f}",
                )
                print("| " + " | ".join(map(str, row)) + " |", flush=True)


if __name__ == "__main__":
    main()
