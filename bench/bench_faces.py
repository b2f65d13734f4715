"""Faces: detection speed per back end, and preprocessing's face box and head speed against the
synthetic corpus's truth, per setting (before: haar + flow; after: dlib + flow, the default;
dlib + landmarks: speeds from the landmarks' head pose).

    python bench/bench_faces.py --quick                  # faces per second, a few images
    python bench/bench_faces.py                          # and a 8-clip synthetic corpus
    python bench/bench_faces.py --synth DIR              # an `emo-jax synth` folder

Speed: each back end on skimage's astronaut photograph (512 x 512, one face), OpenCV limited to
2 threads (dlib runs on one). Accuracy: `emo-jax preprocess` of the corpus with each setting;
per frame the box IoU with the drawn truth, the head speed's mean over the truth's mean
(1 = unbiased), mean absolute error (degrees per frame) and Pearson correlation.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

SETTINGS = {  # (data.detector, data.pose)
    "before": ("haar", "flow"),
    "after": ("dlib", "flow"),
    "after, pose speeds": ("dlib", "landmarks"),
}


def speed(backends: list[str], images: int) -> dict:
    import cv2
    from skimage import data

    from emo_jax.faces.detect import make_detector

    cv2.setNumThreads(2)
    image = data.astronaut()
    out = {}
    for name in backends:
        detector = make_detector(name)
        detector.detect(image)  # warm-up (model load)
        start = time.perf_counter()
        found = sum(len(detector.detect(image)) for _ in range(images))
        out[name] = round(found / (time.perf_counter() - start), 2)
    return out


def accuracy(videos: Path, work: Path) -> dict:
    from emo_jax.config import AudioConfig, Config, DataConfig, ModelConfig
    from emo_jax.data import records
    from emo_jax.data.preprocess import preprocess
    from emo_jax.faces.track import box_iou

    out = {}
    for label, (detector, pose) in SETTINGS.items():
        data = DataConfig(resolution=96, detector=detector, pose=pose, min_face_fraction=0.0)
        model = ModelConfig(audio=AudioConfig(encoder="mel"))  # cheap audio features
        cfg = Config(model=model, data=data)  # min_face_fraction 0: score every clip
        start = time.perf_counter()
        manifest = preprocess(videos, work / label, cfg, progress=False)
        seconds = time.perf_counter() - start
        ious, measured, truths = [], [], []
        for entry in manifest["videos"]:
            result = json.loads((work / label / "videos" / f"{entry['id']}.json").read_text())
            x0, y0, side = result["crop"]
            truth = json.loads((videos / entry["id"].replace(".mp4", ".json")).read_text())
            recs = [
                records.decode_frame(r) for r in records.read_shard(work / label / entry["shard"])
            ]
            boxes = np.stack([r["box"] for r in recs]) * side / 96 + [x0, y0, x0, y0]
            ious.append(box_iou(boxes, np.array(truth["frames"]["box"])))
            measured.append([r["speed"] for r in recs])
            truths.append(truth["frames"]["speed"])
        m, t = np.concatenate(measured), np.concatenate(truths)
        out[f"{label} ({detector} + {pose})"] = {
            "speed_sources": sorted({m["why"] for m in manifest["speed_from_flow"]}),
            "box_iou": round(float(np.concatenate(ious).mean()), 3),
            "speed_ratio": round(float(m.mean() / t.mean()), 3),
            "speed_mae": round(float(np.abs(m - t).mean()), 3),
            "speed_corr": round(float(np.corrcoef(m, t)[0, 1]), 3),
            "clips": len(manifest["videos"]),
            "seconds": round(seconds, 1),
        }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="detection speed only")
    p.add_argument("--synth", type=Path, help="an `emo-jax synth` folder (default: make one)")
    p.add_argument("--images", type=int, default=5, help="detections per back end for speed")
    args = p.parse_args()
    from emo_jax.faces.detect import dlib_available

    backends = ["haar"] + (["dlib"] if dlib_available() else [])
    report = {"faces_per_second": speed(backends, args.images)}
    if not args.quick and "dlib" in backends:
        with tempfile.TemporaryDirectory() as tmp:
            videos = args.synth
            if videos is None:
                from emo_jax.data.synth import make_corpus

                videos = Path(tmp) / "videos"
                make_corpus(videos, identities=8, seconds=4.0, size=128, progress=False)
            report["synthetic_corpus"] = accuracy(videos, Path(tmp))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
