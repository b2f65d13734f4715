"""Preprocessing a tiny synthetic corpus (with bad inputs) and the Grain pipeline over it."""

import dataclasses
import json
import shutil

import av
import msgpack
import numpy as np
import pytest
import soundfile as sf

from emo_jax.audio.features import window_frames
from emo_jax.config import (
    AudioConfig,
    Config,
    ConfigError,
    DataConfig,
    ModelConfig,
    TrainConfig,
    load_config,
)
from emo_jax.data import records, synth
from emo_jax.data.pipeline import YIQ, make_loader, rotate_hue
from emo_jax.data.preprocess import preprocess
from emo_jax.data.video import VideoWriter
from emo_jax.errors import InputError
from emo_jax.faces.track import box_iou
from emo_jax.train.data import eval_data

RES = 64
MODEL = ModelConfig(audio=AudioConfig(encoder="mel", n_mels=16))  # the features stored


def _corrupt_middle(path, out):
    """Copies an mp4 with the data of its 60th video packet overwritten."""
    with av.open(str(path)) as c:
        packets = [(p.pos, p.size) for p in c.demux(video=0) if p.size]
    pos, size = packets[60]
    data = bytearray(path.read_bytes())
    junk = np.random.default_rng(0).integers(0, 256, size - size // 4, dtype=np.uint8)
    data[pos + size // 4 : pos + size] = junk.tobytes()
    out.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    videos = root / "videos"
    synth.make_corpus(videos, identities=3, seconds=4.0, size=96, progress=False)
    bad = root / "bad_src"
    clip = synth.write_clip(bad, "c", identity_seed=77, clip_seed=0, seconds=4.0, size=96)
    _corrupt_middle(clip, videos / "corrupt.mp4")
    (videos / "notes.mp4").write_text("not a video")
    frames = synth.render_clip(synth.make_identity(78), 2.0, 96, 0).frames
    with VideoWriter(videos / "sub" / "silent.mp4") as w:  # no audio track
        w.write(frames)
    noise = np.random.default_rng(1).integers(0, 255, (50, 96, 96, 3), dtype=np.uint8)
    with VideoWriter(videos / "noface.mp4", audio=np.zeros(32000, np.float32)) as w:
        w.write(noise)
    out = root / "processed"
    cfg = Config(model=MODEL, data=DataConfig(shards=str(out), resolution=RES))
    manifest = preprocess(videos, out, cfg, workers=2, progress=False)
    return videos, out, manifest


def test_manifest_counts_and_reasons(corpus):
    _, out, manifest = corpus
    assert manifest == json.loads((out / "manifest.json").read_text())
    assert manifest["counts"] == {
        "videos_found": 7,
        "videos_ok": 4,
        "videos_skipped": 3,
        "videos_trimmed": 1,
        "frames": 3 * 100 + manifest["videos"][0]["n_frames"],
    }
    reasons = {item["file"].split("/")[-1]: item["reason"] for item in manifest["skipped"]}
    assert "not readable as a video" in reasons["notes.mp4"]
    assert "no audio track" in reasons["silent.mp4"]
    assert "no face" in reasons["noface.mp4"]
    (trimmed,) = manifest["trimmed"]
    assert trimmed["file"].endswith("corrupt.mp4") and "corrupt" in trimmed["note"]
    assert 40 <= manifest["videos"][0]["n_frames"] < 61  # corrupt.mp4 sorts first


def test_recovers_the_ground_truth(corpus):
    videos, out, manifest = corpus
    ious, speeds, truths = [], [], []
    for entry in manifest["videos"][1:]:
        result = json.loads((out / "videos" / f"{entry['id']}.json").read_text())
        x0, y0, side = result["crop"]
        truth = json.loads((videos / entry["id"].replace(".mp4", ".json")).read_text())
        recs = [records.decode_frame(r) for r in records.read_shard(out / entry["shard"])]
        assert len(recs) == entry["n_frames"] == truth["n_frames"]
        boxes = np.stack([r["box"] for r in recs]) * side / RES + [x0, y0, x0, y0]
        ious.append(box_iou(boxes, np.array(truth["frames"]["box"])).mean())
        speeds.append([r["speed"] for r in recs])
        truths.append(truth["frames"]["speed"])
        audio = np.concatenate([r["audio"] for r in recs])  # the clip's own waveform, in sync
        wav, _ = sf.read(videos / entry["id"].replace(".mp4", ".wav"), dtype="float32")
        assert np.corrcoef(audio[640:-640], wav[640:-640])[0, 1] > 0.95
        assert records.decode_jpeg(recs[0]["jpeg"]).shape == (RES, RES, 3)
    corr = np.corrcoef(np.concatenate(speeds), np.concatenate(truths))[0, 1]
    print(f"face box IoU {np.mean(ious):.3f}, head speed correlation {corr:.3f}")
    assert np.mean(ious) > 0.35  # Haar's box is larger than the drawn face box (see README)
    assert corr > 0.6


def test_rerun_is_idempotent(corpus):
    videos, out, manifest = corpus
    shard = out / manifest["videos"][1]["shard"]
    stamp = shard.stat().st_mtime_ns
    cfg = Config(model=MODEL, data=DataConfig(resolution=RES))
    again = preprocess(videos, out, cfg, workers=1, progress=False)
    assert again == manifest and shard.stat().st_mtime_ns == stamp
    # a changed setting re-processes; a new file is picked up alone
    shutil.copy(videos / "id0000_clip00.mp4", videos / "sub" / "copy.mp4")
    third = preprocess(videos, out, cfg, workers=1, progress=False)
    assert third["counts"]["videos_ok"] == 5 and shard.stat().st_mtime_ns == stamp
    (videos / "sub" / "copy.mp4").unlink()
    assert preprocess(videos, out, cfg, progress=False) == manifest


def test_other_audio_features_rewrite_only_the_features(corpus, tmp_path):
    videos, out, manifest = corpus
    copy = tmp_path / "processed"
    shutil.copytree(out, copy)
    audio = dataclasses.replace(MODEL.audio, n_mels=8)
    cfg = Config(
        model=ModelConfig(audio=audio), data=DataConfig(resolution=RES, audio_dtype="float16")
    )
    entry = manifest["videos"][1]
    before = [msgpack.unpackb(r) for r in records.read_shard(copy / entry["shard"])]
    result = json.loads((copy / "videos" / f"{entry['id']}.json").read_text())
    again = preprocess(videos, copy, cfg, workers=1, progress=False)
    assert again["audio_features"] == records.audio_spec(audio) != manifest["audio_features"]
    digest = records.spec_digest(records.audio_spec(audio))
    assert again["settings"] == {
        **manifest["settings"],
        "audio_dtype": "float16",
        "audio_features": digest,
    }
    assert again["videos"] == manifest["videos"] and again["skipped"] == manifest["skipped"]
    after = [msgpack.unpackb(r) for r in records.read_shard(copy / entry["shard"])]
    assert [{**r, "features": None} for r in after] == [{**r, "features": None} for r in before]
    assert after[0]["features"]["shape"] == [4, 8] and after[0]["features"]["dtype"] == "<f2"
    stored = json.loads((copy / "videos" / f"{entry['id']}.json").read_text())
    assert stored == {**result, "settings": again["settings"]}  # the face work was not redone


def _cfg(out, **kw):
    """A config reading `out`; its clips are the default model's (12 + 4 frames, m = 2)."""
    data = DataConfig(**{"shards": str(out), "resolution": RES, "batch_size": 2, **kw})
    return Config(model=MODEL, data=data)


def _take(loader, n):
    it = iter(loader)
    return [next(it) for _ in range(n)]


def test_video_batches_shapes_and_dtypes(corpus):
    (batch,) = _take(make_loader(_cfg(corpus[1]), 0, 1), 1)
    shapes = {k: (v.shape, v.dtype) for k, v in batch.items()}
    assert shapes == {
        "frames": ((2, 12, RES, RES, 3), np.uint8),
        "motion_frames": ((2, 4, RES, RES, 3), np.uint8),
        "reference": ((2, RES, RES, 3), np.uint8),
        "audio": ((2, 12, 5, 4, 16), np.float32),  # m = 2; 4 mel subframes x 16 mels
        "mask": ((2, RES, RES), np.float32),
        "speed": ((2, 12), np.float32),
    }
    assert set(np.unique(batch["mask"])) == {0.0, 1.0}


def test_image_batches_and_resize(corpus):
    (batch,) = _take(make_loader(_cfg(corpus[1], mode="image", resolution=32), 0, 1), 1)
    assert {k: v.shape for k, v in batch.items()} == {
        "frames": (2, 1, 32, 32, 3),
        "reference": (2, 32, 32, 3),
        "mask": (2, 32, 32),
    }


def test_example_matches_the_records(corpus):
    _, out, manifest = corpus
    (batch,) = _take(make_loader(_cfg(out, shuffle=False), 0, 1), 1)
    entry = manifest["videos"][0]  # first clip: video 0, frames 0..15, targets 4..15
    recs = [records.decode_frame(r) for r in records.read_shard(out / entry["shard"])]
    windows = window_frames(np.stack([r["features"] for r in recs]), 2)  # m = 2
    assert np.array_equal(batch["audio"][0], windows[4:16])
    assert np.allclose(batch["speed"][0], [r["speed"] for r in recs[4:16]])
    target = np.stack([records.decode_jpeg(r["jpeg"]) for r in recs[4:16]])
    assert np.array_equal(batch["frames"][0], target)
    motion = np.stack([records.decode_jpeg(r["jpeg"]) for r in recs[0:4]])
    assert np.array_equal(batch["motion_frames"][0], motion)
    mask = np.zeros((RES, RES), np.float32)
    for r in recs[4:16]:  # union of the target frames' boxes
        x0, y0 = np.floor(r["box"][:2]).astype(int)
        x1, y1 = np.ceil(r["box"][2:]).astype(int)
        mask[y0:y1, x0:x1] = 1
    assert np.array_equal(batch["mask"][0], mask) and 0 < mask.mean() < 1


def test_rotate_hue_keeps_luminance_and_greys():
    rgb = np.random.default_rng(0).integers(40, 200, (64, 3)).astype(np.uint8)
    assert np.array_equal(rotate_hue(rgb, 0.0), rgb)
    assert np.abs(rotate_hue(rgb, 2 * np.pi).astype(int) - rgb).max() <= 1
    turned = rotate_hue(rgb, 2.0)
    assert np.abs((turned.astype(float) - rgb) @ YIQ[0]).max() < 6  # clipped out-of-gamut ones
    assert np.abs(turned.astype(int) - rgb).max() > 50
    grey = np.array([[0, 0, 0], [128, 128, 128], [255, 255, 255]], np.uint8)
    assert np.array_equal(rotate_hue(grey, 1.0), grey)


def _chroma_turn(plain: np.ndarray, turned: np.ndarray) -> float:
    """The angle that turns the YIQ chroma of `plain` into `turned` (least squares)."""
    a = plain.reshape(-1, 3).astype(float) @ YIQ[1:].T
    b = turned.reshape(-1, 3).astype(float) @ YIQ[1:].T
    return float(np.arctan2(np.sum(a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]), np.sum(a * b)))


def test_hue_augment_turns_a_whole_example_alike(corpus):
    (plain,) = _take(make_loader(_cfg(corpus[1], seed=5), 0, 1), 1)
    (aug,) = _take(make_loader(_cfg(corpus[1], seed=5, hue_augment=1.0), 0, 1), 1)
    for key in ("audio", "mask", "speed"):
        assert np.array_equal(plain[key], aug[key])
    angles = []
    for i in range(2):
        angle = _chroma_turn(plain["frames"][i], aug["frames"][i])
        for key in ("frames", "motion_frames", "reference"):
            expected = rotate_hue(plain[key][i], angle).astype(int)
            assert np.abs(expected - aug[key][i]).mean() < 1.0, key
        angles.append(angle)
    assert abs(angles[0] - angles[1]) > 1e-3  # a new angle per example


def test_eval_data_is_the_named_corpus_unaugmented(corpus):
    data = _cfg(corpus[0] / "elsewhere", seed=2, hue_augment=1.0)
    cfg = Config(model=MODEL, data=data.data, train=TrainConfig(eval_shards=str(corpus[1])))
    (evaluation,) = _take(make_loader(eval_data(cfg), 0, 1), 1)
    (plain,) = _take(make_loader(_cfg(corpus[1], seed=3), 0, 1), 1)
    assert all(np.array_equal(evaluation[k], plain[k]) for k in plain)


def test_bad_hue_augment_and_missing_eval_corpus(corpus):
    with pytest.raises(ConfigError, match=r"data.hue_augment: 1.5 is not in \[0, 1\]"):
        load_config(None, ["data.hue_augment=1.5"])
    cfg = Config(
        model=MODEL,
        data=_cfg(corpus[1]).data,
        train=TrainConfig(eval_shards=str(corpus[0] / "none")),
    )
    with pytest.raises(InputError, match="none/manifest.json: no manifest"):
        make_loader(eval_data(cfg), 0, 1)


def test_same_seed_same_batches(corpus):
    a = _take(make_loader(_cfg(corpus[1], seed=3), 0, 1), 3)
    b = _take(make_loader(_cfg(corpus[1], seed=3), 0, 1), 3)
    c = _take(make_loader(_cfg(corpus[1], seed=4), 0, 1), 3)
    for x, y in zip(a, b):
        assert all(np.array_equal(x[k], y[k]) for k in x)
    assert not all(np.array_equal(x["audio"], z["audio"]) for x, z in zip(a, c))


def test_restored_state_gives_the_next_batch(corpus):
    cfg = _cfg(corpus[1], seed=5)
    it = iter(make_loader(cfg, 0, 1))
    for _ in range(3):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(2)]
    resumed = iter(make_loader(cfg, 0, 1))
    resumed.set_state(state)
    for want in expected:
        got = next(resumed)
        assert all(np.array_equal(want[k], got[k]) for k in want)


def test_processes_get_disjoint_halves(corpus):
    cfg = _cfg(corpus[1], batch_size=4, shuffle=False, num_epochs=1)
    firsts = []
    for index in (0, 1):
        batches = list(iter(make_loader(cfg, index, 2)))
        assert all(b["frames"].shape[0] == 2 for b in batches)
        firsts.append(np.concatenate([b["audio"] for b in batches]))
    n = min(len(firsts[0]), len(firsts[1]))
    assert n > 0
    assert not any(np.array_equal(a, b) for a in firsts[0][:n] for b in firsts[1][:n])


@pytest.mark.slow
def test_worker_processes_resume_exactly(corpus):
    cfg = _cfg(corpus[1], seed=6, worker_count=2)
    it = iter(make_loader(cfg, 0, 1))
    for _ in range(3):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(3)]
    resumed = iter(make_loader(cfg, 0, 1))
    resumed.set_state(state)
    for want in expected:
        got = next(resumed)
        assert all(np.array_equal(want[k], got[k]) for k in want)
