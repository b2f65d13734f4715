"""Random access to the preprocessed corpus: which clips exist, and reading one as arrays.

Frame k of a video owns audio samples [k * spf, (k + 1) * spf), spf = sample_rate / fps (640 at
16 kHz and 25 fps), and its audio features (the whole track's, stored by preprocessing). A clip
starting at frame s (video mode) holds motion frames [s, s + n) and target frames [t0, t0 + f)
with t0 = s + n; its audio is the stored features of frames [t0 - m, t0 + f + m) windowed
(`window_frames`: frames beyond the video's ends repeat its end frames), as generation's.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import cv2
import numpy as np

from emo_jax.audio.features import window_frames
from emo_jax.config import AudioConfig
from emo_jax.data.records import audio_spec, decode_frame, decode_jpeg
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
    audio_features: dict | None  # the `audio_spec` of the stored features (None: none stored)
    detector: str | None  # the face back end the crops were cut around (None: not recorded)

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
            audio = manifest.get("audio_features")
            detector = manifest["settings"].get("detector")
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
            audio_features=audio,
            detector=detector,
        )

    def check_audio(self, cfg: AudioConfig) -> None:
        """An error unless the stored features are `cfg`'s (re-running preprocess fixes it)."""
        path = self.root / "manifest.json"
        fix = (
            f"re-run `emo-jax preprocess --out {self.root}` with this config (it rewrites only "
            "the features)"
        )
        if self.audio_features is None:
            raise InputError(
                f"{path}: the shards hold no audio features (made before they were stored): {fix}"
            )
        want = audio_spec(cfg)
        if self.audio_features != want:
            keys = sorted(set(want) | set(self.audio_features))
            diff = [k for k in keys if self.audio_features.get(k) != want.get(k)]
            made = ", ".join(f"{k}={self.audio_features.get(k)}" for k in diff)
            this = ", ".join(f"{k}={want.get(k)}" for k in diff)
            raise InputError(
                f"{path}: the shards' audio features were made with model.audio {made}; this "
                f"config has {this}: {fix}"
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

    def clip(
        self, video: int, start: int, n_motion: int, n_frames: int, window: int | None
    ) -> dict:
        """Motion + target frames, mask and speeds of one clip, and (with `window` m, not
        None) its target frames' audio feature windows (f, 2m+1, layers, dim) float32."""
        n_video = int(self.corpus.n_frames[video])
        t0 = start + n_motion
        m = window or 0
        lo, hi = max(0, min(start, t0 - m)), min(n_video, t0 + n_frames + m)
        recs = self.read(video, range(lo, hi))
        target = recs[t0 - lo : t0 - lo + n_frames]
        example = {
            "frames": np.stack([self.image(r) for r in target]),
            "motion_frames": np.stack([self.image(r) for r in recs[start - lo : t0 - lo]])
            if n_motion
            else np.zeros((0, self.resolution, self.resolution, 3), np.uint8),
            "mask": self.mask(target),
            "speed": np.array([r["speed"] for r in target], np.float32),
        }
        if window is not None:
            keep = np.clip(np.arange(t0 - m, t0 + n_frames + m), 0, n_video - 1) - lo
            frames = np.stack([recs[k]["features"] for k in keep])  # (f + 2m, layers, dim)
            example["audio"] = window_frames(frames, m)[m : m + n_frames]
        return example
