"""Training metrics: every step to RUN/metrics.jsonl (with the seconds it took), every
`log_every` steps the means to TensorBoard (RUN/tb) and stdout; evaluation losses to
RUN/eval.jsonl too. Only process 0 writes."""

from __future__ import annotations

import json
import resource
import time
import zlib
from pathlib import Path

import jax
import numpy as np


def memory_stats() -> dict[str, float]:
    """Device memory in use / peak (GPU, TPU), else the host's peak resident memory (CPU)."""
    stats = jax.local_devices()[0].memory_stats() or {}
    if "bytes_in_use" in stats:
        return {
            "memory/device_bytes_in_use": float(stats["bytes_in_use"]),
            "memory/device_peak_bytes": float(stats.get("peak_bytes_in_use", 0)),
        }
    return {
        "memory/host_peak_rss_bytes": float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
        * 1024
    }


def batch_digest(batch: dict[str, np.ndarray]) -> int:
    """A fingerprint of this process's rows of a batch (to check resumed data positions)."""
    return zlib.crc32(np.ascontiguousarray(batch["frames"]).tobytes())


def step_seconds(run: Path) -> np.ndarray:
    """Seconds each step took, from RUN/metrics.jsonl, over every run of a resumed run folder
    (the first step of each run, which compiles, has none); empty if there is no log."""
    log = run / "metrics.jsonl"
    rows = map(json.loads, log.read_text().splitlines()) if log.is_file() else []
    return np.array([r["seconds"] for r in rows if "seconds" in r])


class MetricsLog:
    """Per-step records and periodic summaries (no-op on processes other than 0)."""

    def __init__(self, out_dir: Path, log_every: int, examples_per_step: int, write=print):
        self.enabled = jax.process_index() == 0
        self.log_every = max(1, log_every)
        self.examples_per_step = examples_per_step
        self.write = write
        self.out_dir = out_dir
        self.window: list[dict] = []
        self.t0 = time.perf_counter()
        self.last: float | None = None  # when this process recorded its previous step
        self.tb = self.jsonl = None
        if self.enabled:
            from tensorboardX import SummaryWriter

            out_dir.mkdir(parents=True, exist_ok=True)
            self.tb = SummaryWriter(str(out_dir / "tb"))
            self.jsonl = open(out_dir / "metrics.jsonl", "a")

    def record(self, step: int, metrics: dict[str, float], batch_digest: int) -> None:
        """One step's metrics (loss, grad_norm, lr, ok); a summary every `log_every` steps."""
        if not self.enabled:
            return
        row = {"step": step, **{k: float(v) for k, v in metrics.items()}, "batch": batch_digest}
        now = time.perf_counter()
        if self.last is not None:
            row["seconds"] = now - self.last
        self.last = now
        self.jsonl.write(json.dumps(row) + "\n")
        self.jsonl.flush()
        if not row["ok"]:
            self.write(f"step {step}: non-finite loss or gradient, update skipped")
            self.tb.add_scalar("train/skipped_step", 1.0, step)
        self.window.append(row)
        if step % self.log_every == 0:
            self.summary(step)

    def summary(self, step: int) -> None:
        rows = [r for r in self.window if r["ok"]] or self.window
        now = time.perf_counter()
        scalars = {
            "train/loss": float(np.mean([r["loss"] for r in rows])),
            "train/grad_norm": float(np.mean([r["grad_norm"] for r in rows])),
            "train/learning_rate": rows[-1]["lr"],
            "train/examples_per_sec": len(self.window) * self.examples_per_step / (now - self.t0),
            **memory_stats(),
        }
        for k, v in scalars.items():
            self.tb.add_scalar(k, v, step)
        self.tb.flush()
        self.write(
            f"step {step}: loss {scalars['train/loss']:.4f} grad_norm "
            f"{scalars['train/grad_norm']:.3g} lr {scalars['train/learning_rate']:.2e} "
            f"{scalars['train/examples_per_sec']:.2f} examples/s"
        )
        self.window, self.t0 = [], now

    def eval(self, step: int, loss: float) -> None:
        """The fixed-batch evaluation loss: RUN/eval.jsonl, TensorBoard, stdout."""
        if not self.enabled:
            return
        with open(self.out_dir / "eval.jsonl", "a") as f:
            f.write(json.dumps({"step": step, "loss": loss}) + "\n")
        self.tb.add_scalar("eval/loss", loss, step)
        self.write(f"step {step}: eval loss {loss:.4f}")

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        if self.enabled:
            self.tb.add_image(tag, image, step, dataformats="HWC")

    def close(self) -> None:
        if self.enabled:
            self.tb.close()
            self.jsonl.close()
