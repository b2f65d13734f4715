"""An evaluation's figures from its per-clip rows, their standard errors, and paired
differences between two videos of one evaluation or two evaluations of the same clips.

Each clip's row keeps, per video, what its figures pool (`evaluate.measure_video`), so every
figure can be recomputed on any subset of the clips. A standard error is the jackknife's over
clips (leave one clip out): for a mean over clips it is the usual SE of the mean; for the pooled
figures (head speed, seams, pauses) it carries the spread between people. A paired difference
is computed on each leave-one-out subset of both, so the clips' shared difficulty cancels.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from emo_jax.eval import metrics

FIGURES = (  # (label, key, format, what None reads as)
    ("lip sync (Pearson)", "lip_sync", "{:.3f}", "undefined"),
    ("lip sync, shuffled audio", "lip_sync_shuffled", "{:.3f}", "undefined"),
    ("identity PSNR (dB)", "identity_psnr", "{:.2f}", "-"),  # None: infinite (equal frames)
    ("identity SSIM", "identity_ssim", "{:.3f}", "-"),
    ("head speed (Spearman)", "head_speed_spearman", "{:.3f}", "undefined"),
    ("seams (boundary / within)", "seam_ratio", "{:.3f}", "undefined"),
    ("mouth opening in pauses", "pause_opening", "{:.3f}", "-"),
    ("mouth change, pauses / speech", "pause_change", "{:.3f}", "undefined"),
)
PAIRED_WITHIN = (  # (what, video, other video, keys): paired differences within one evaluation
    ("generated - reference repeated", "generated", "reference_repeated",
     ("identity_psnr", "identity_ssim")),
    ("generated - ground truth", "generated", "ground_truth", ("pause_opening", "pause_change")),
)  # fmt: skip


def _value(x: Any) -> float:
    return math.nan if x is None else float(x)


def _mean(values: list[float]) -> float:
    """Mean of the finite values (an infinite PSNR, equal frames, is left out); NaN if none."""
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def correlation_mean(values: list[float]) -> float:
    """Mean over clips of a correlation: an undefined clip (NaN: a constant series) counts 0;
    NaN when every clip's is undefined."""
    if all(math.isnan(v) for v in values):
        return math.nan
    return float(np.mean([0.0 if math.isnan(v) else v for v in values]))


def _ratio(rows: list[dict], part: str, top: str, bottom: str) -> float:
    """Pooled mean of `top` over pooled mean of `bottom` ([sum, count] pairs in row[part])."""
    return metrics.ratio_of_means(
        np.sum([r[part][top] for r in rows], axis=0),
        np.sum([r[part][bottom] for r in rows], axis=0),
    )


def figures(rows: list[dict], centers: tuple[float, ...]) -> dict[str, Any]:
    """The figures (`FIGURES` keys, plus head-speed buckets) of one video's per-clip rows."""
    speed = metrics.buckets_spearman(
        np.sum([r["speed"]["sums"] for r in rows], axis=0),
        np.sum([r["speed"]["frames"] for r in rows], axis=0),
        centers,
    )
    pauses = np.sum([r["pauses"]["opening"] for r in rows], axis=0)
    return {
        "lip_sync": correlation_mean([_value(r["lip_sync"]) for r in rows]),
        "lip_sync_shuffled": (
            correlation_mean([_value(r["lip_sync_shuffled"]) for r in rows])
            if len(rows) > 1
            else math.nan
        ),
        "identity_psnr": _mean([_value(r.get("psnr")) for r in rows]),
        "identity_ssim": _mean([_value(r.get("ssim")) for r in rows]),
        "head_speed_spearman": speed["spearman"],
        "head_speed_buckets": speed["buckets"],
        "seam_ratio": _ratio(rows, "seams", "boundary", "within"),
        "pause_opening": pauses[0] / pauses[1] if pauses[1] else math.nan,
        "pause_change": _ratio(rows, "pauses", "pause_change", "speech_change"),
    }


def jackknife(estimate: Callable[[list[int]], dict[str, float]], n: int) -> dict[str, float]:
    """Jackknife standard error of each value of estimate(clip indices) over n clips; NaN
    where n < 2 or a leave-one-out value is undefined."""
    if n < 2:
        return {k: math.nan for k in estimate(list(range(n)))}
    leave_out = [estimate([j for j in range(n) if j != i]) for i in range(n)]
    out = {}
    for key in leave_out[0]:
        values = np.array([_value(v[key]) for v in leave_out])
        spread = ((values - values.mean()) ** 2).sum()
        out[key] = math.sqrt((n - 1) / n * spread) if np.isfinite(values).all() else math.nan
    return out


def _numbers(d: dict) -> dict[str, float]:
    return {key: _value(d[key]) for _, key, *_ in FIGURES}


def standard_errors(per_clip: list[dict], video: str, centers: tuple[float, ...]) -> dict:
    """Jackknife standard error of each figure of one video."""
    return jackknife(
        lambda idx: _numbers(figures([per_clip[i][video] for i in idx], centers)), len(per_clip)
    )


def paired(
    a: list[dict], video_a: str, b: list[dict], video_b: str, centers: tuple[float, ...]
) -> dict[str, dict[str, float]]:
    """Figures of (a, video_a) minus those of (b, video_b) on the same clips (rows in the same
    order), each with its paired standard error: {key: {"difference", "se"}}."""
    if [r["name"] for r in a] != [r["name"] for r in b]:
        raise ValueError("paired figures need the same clips in the same order")

    def difference(idx: list[int]) -> dict[str, float]:
        fa = _numbers(figures([a[i][video_a] for i in idx], centers))
        fb = _numbers(figures([b[i][video_b] for i in idx], centers))
        return {k: fa[k] - fb[k] for k in fa}

    whole, se = difference(list(range(len(a)))), jackknife(difference, len(a))
    return {k: {"difference": whole[k], "se": se[k]} for k in whole}


def _cell(value: float | None, se: float | None, fmt: str, missing: str, sign: str = "") -> str:
    if value is None or not math.isfinite(value):
        return missing
    text = fmt.replace("{:", "{:" + sign).format(value)
    return text if se is None or not math.isfinite(se) else f"{text} ± {fmt.format(se)}"


def format_table(results: dict, videos: tuple[str, ...], heads: tuple[str, ...]) -> str:
    """The figures as a plain-text table, figures x videos, "value ± SE" where it has one."""
    width = max(len(f[0]) for f in FIGURES)
    lines = [f"{'':{width}}  " + "  ".join(f"{h:>18}" for h in heads)]
    errors = results.get("standard_errors", {})
    for label, key, fmt, missing in FIGURES:
        cells = [
            _cell(results["metrics"][v].get(key), errors.get(v, {}).get(key), fmt, missing)
            for v in videos
        ]
        lines.append(f"{label:{width}}  " + "  ".join(f"{c:>18}" for c in cells))
    return "\n".join(lines)


def format_paired(title: str, differences: dict[str, dict[str, float]]) -> str:
    """Paired differences (`paired`) as lines under a title."""
    width = max(len(f[0]) for f in FIGURES)
    lines = [title]
    for label, key, fmt, _ in FIGURES:
        if key in differences:
            d = differences[key]
            cell = _cell(d["difference"], d["se"], fmt, "undefined", sign="+")
            lines.append(f"  {label:{width}}  {cell}")
    return "\n".join(lines)
