"""Random access to the preprocessed corpus: which clips exist, and reading one as arrays.

Frame k of a video owns audio samples [k * spf, (k + 1) * spf), spf = sample_rate / fps (640 at
16 kHz and 25 fps). A clip starting at frame s (video mode) holds motion frames [s, s + n) and
target frames [t0, t0 + f) with t0 = s + n; its audio covers frames [t0 - c, t0 + f + c)
(c = m + p: the window and the encoder's margin, `ClipSpec`), zero-padded beyond the ends of the video, with the part inside the video (`audio_span`) and the
whole track's normalisation statistics (`audio_stats`, emo_jax.audio.features.track_stats).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import cv2
import numpy as np

from emo_jax.audio.features import track_stats
from emo_jax.data.records import decode_frame, decode_jpeg
from emo_jax.errors import InputError


@dataclasses.dataclass(frozen=True)
class Corpus:
    """The shard list of a preprocessed folder (from its manifest.json)."""

    root: Path
    ids: tuple[str, ...]
    shards: tuple[Path, ...]
    n_frames: np.ndarray  # (V,) frames per video
    offsets: np.ndarray  # (V,) global record index of each video's frame 0
    resolution: int
    samples_per_frame: int

    @classmethod
    def load(cls, root: str | Path) -> Corpus:
        root = Path(root)
        path = root / "manifest.json"
        if not path.is_file():
            raise InputError(f"{path}: no manifest (run `emo-jax preprocess` first)")
        try:
            manifest = json.loads(path.read_text())
            videos = manifest["videos"]
            resolution = int(manifest["settings"]["resolution"])
            spf = int(manifest["samples_per_frame"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise InputError(f"{path}: not a valid emo_jax manifest") from None
        if not videos:
            raise InputError(f"{path}: the corpus has no usable video")
        n = np.array([v["n_frames"] for v in videos], np.int64)
        return cls(
            root=root,
            ids=tuple(v["id"] for v in videos),
            shards=tuple(root / v["shard"] for v in videos),
            n_frames=n,
            offsets=np.concatenate([[0], np.cumsum(n)[:-1]]),
            resolution=resolution,
            samples_per_frame=spf,
        )


class ClipIndex:
    """Grain data source of clip positions: item i -> {"video", "start"} (int64 scalars).

    Every video contributes the starts 0, stride, 2 * stride, ... of clips of `length` frames
    that fit inside it; videos shorter than one clip contribute nothing.
    """

    def __init__(self, corpus: Corpus, length: int, stride: int = 1):
        counts = np.maximum(0, (corpus.n_frames - length) // stride + 1)
        if counts.sum() == 0:
            raise InputError(f"{corpus.root}: no video has {length} frames for one clip")
        self.stride = stride
        self.length = length
        self.counts = counts
        self.cumulative = np.cumsum(counts)
        self.root = corpus.root

    def __repr__(self) -> str:  # Grain checks it when an iterator state is restored
        return f"ClipIndex(root={str(self.root)!r}, length={self.length}, stride={self.stride}, clips={len(self)})"

    def __len__(self) -> int:
        return int(self.cumulative[-1])

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        video = int(np.searchsorted(self.cumulative, index, side="right"))
        first = self.cumulative[video - 1] if video else 0
        return {"video": np.int64(video), "start": np.int64((index - first) * self.stride)}


@dataclasses.dataclass(frozen=True)
class _ShardFile:
    """ArrayRecord's FileInstruction protocol: record counts known, so no file is opened early."""

    filename: str
    skip: int
    take: int
    examples_in_shard: int


class FrameReader:
    """Reads frame records of the corpus (ArrayRecord, opened lazily; picklable)."""

    def __init__(self, corpus: Corpus, resolution: int):
        self.corpus = corpus
        self.resolution = resolution
        self._source = None
        self._stats: dict[int, np.ndarray] = {}

    def read(self, video: int, frames: range) -> list[dict]:
        """Decoded records of frames `frames` of video `video`."""
        if self._source is None:
            import grain

            instructions = [
                _ShardFile(str(p), 0, int(n), int(n))
                for p, n in zip(self.corpus.shards, self.corpus.n_frames)
            ]
            self._source = grain.sources.ArrayRecordDataSource(instructions)
        base = int(self.corpus.offsets[video])
        keys = [base + k for k in frames]
        return [decode_frame(raw) for raw in self._source.__getitems__(keys)]

    def audio_stats(self, video: int) -> np.ndarray:
        """`track_stats` of the video's whole audio track (read once, then cached)."""
        if video not in self._stats:
            recs = self.read(video, range(int(self.corpus.n_frames[video])))
            self._stats[video] = track_stats(np.concatenate([r["audio"] for r in recs]))
        return self._stats[video]

    def image(self, rec: dict) -> np.ndarray:
        """The record's frame as RGB uint8 (resolution, resolution, 3)."""
        img = decode_jpeg(rec["jpeg"])
        if img.shape[0] != self.resolution:
            interp = cv2.INTER_AREA if img.shape[0] > self.resolution else cv2.INTER_LINEAR
            img = cv2.resize(img, (self.resolution, self.resolution), interpolation=interp)
        return img

    def mask(self, recs: list[dict]) -> np.ndarray:
        """Union of the records' face boxes, float32 (resolution, resolution) of 0 / 1."""
        scale = self.resolution / self.corpus.resolution
        mask = np.zeros((self.resolution, self.resolution), np.float32)
        for rec in recs:
            x0, y0 = np.floor(rec["box"][:2] * scale).astype(int)
            x1, y1 = np.ceil(rec["box"][2:] * scale).astype(int)
            mask[max(0, y0) : y1, max(0, x0) : x1] = 1
        return mask

    def reference(self, video: int, avoid: range, rng: np.random.Generator) -> np.ndarray:
        """A random frame of the video outside `avoid` (if the video has one)."""
        n = int(self.corpus.n_frames[video])
        others = n - len(avoid)
        if others > 0:
            k = int(rng.integers(others))
            k = k if k < avoid.start else k + len(avoid)
        else:
            k = int(rng.integers(n))
        return self.image(self.read(video, range(k, k + 1))[0])

    def clip(self, video: int, start: int, n_motion: int, n_frames: int, context: int) -> dict:
        """Motion + target frames, audio with context, mask and speeds of one clip."""
        n_video = int(self.corpus.n_frames[video])
        t0 = start + n_motion
        lo = max(0, min(start, t0 - context))
        hi = min(n_video, t0 + n_frames + context)
        recs = self.read(video, range(lo, hi))
        spf = self.corpus.samples_per_frame
        audio = np.zeros(((n_frames + 2 * context) * spf,), np.float32)
        for k in range(max(lo, t0 - context), min(hi, t0 + n_frames + context)):
            j = k - (t0 - context)
            audio[j * spf : (j + 1) * spf] = recs[k - lo]["audio"]
        target = recs[t0 - lo : t0 - lo + n_frames]
        return {
            "frames": np.stack([self.image(r) for r in target]),
            "motion_frames": np.stack([self.image(r) for r in recs[start - lo : t0 - lo]])
            if n_motion
            else np.zeros((0, self.resolution, self.resolution, 3), np.uint8),
            "audio": audio,
            "audio_span": np.array([max(lo, t0 - context), hi], np.int32) - (t0 - context),
            "audio_stats": self.audio_stats(video),
            "mask": self.mask(target),
            "speed": np.array([r["speed"] for r in target], np.float32),
        }
