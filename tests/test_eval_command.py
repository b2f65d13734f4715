"""`emo-jax evaluate` end to end with an oracle pipeline that "generates" the ground truth (the
metric code on known answers: lip sync at the measure's ceiling, the controls near 0, identity
exact, seams near 1), the command's errors, and (slow) a real run with random weights."""

import json
import math
import types
import warnings

import numpy as np
import pytest

from emo_jax.cli import build_parser, main
from emo_jax.commands.generate import sampling_options
from emo_jax.data import synth
from emo_jax.eval import evaluate, summary
from emo_jax.models.vae import AutoencoderKL, decode_images, encode_images
from emo_jax.pipeline import EMOPipeline, Options, RandomWeightsWarning
from emo_jax.pipeline.loading import TINY_CONFIG, resolve_checkpoint


class Oracle(EMOPipeline):
    """A pipeline whose video is the clip's own ground truth, cut as the reference was."""

    def __init__(self, model, videos):
        super().__init__(model)
        self.videos = iter(videos)

    def generate(self, job, *args, **kwargs):
        frames = next(self.videos)
        size = job.reference.image.shape[0]
        cut, _ = evaluate.cut(frames, np.zeros((len(frames), 4)), job.reference.crop, size)
        return types.SimpleNamespace(frames=cut[: job.num_frames])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("heldout")
    synth.make_corpus(
        folder, 2, 3.0, size=96, split="heldout", audio_source="espeak", progress=False
    )
    return folder


@pytest.fixture(scope="module")
def results(corpus):
    paths = evaluate.find_clips(corpus)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        base = EMOPipeline.from_pretrained(None, TINY_CONFIG)
    oracle = Oracle(base.model, [evaluate.load_clip(p).frames for p in paths])
    return evaluate.evaluate(oracle, paths, options={"resolution": 96})


def test_oracle_reads_the_truth(results):
    generated, truth = results["metrics"]["generated"], results["metrics"]["ground_truth"]
    assert results["clips"] == 2 and results["splits"] == ["heldout"]
    assert results["resolution"] == 96 and len(results["per_clip"]) == 2
    assert generated["lip_sync"] >= 0.95
    assert generated["lip_sync"] == pytest.approx(truth["lip_sync"])
    assert abs(generated["lip_sync_shuffled"]) <= 0.3
    assert generated["identity_psnr"] is None  # infinite: the frames are the truth
    assert generated["identity_ssim"] == pytest.approx(1.0)
    assert generated["head_speed_spearman"] >= 0.8
    assert 0.5 < generated["seam_ratio"] < 2.0
    for key in ("pause_opening", "pause_change"):  # the mouth in pauses: the truth's own
        assert generated[key] == truth[key]
        difference = results["paired"]["generated - ground truth"][key]
        assert difference["difference"] in (0.0, None) and difference["se"] in (0.0, None)
    # standard errors over the 2 clips: the jackknife's of a mean is |a - b| / 2
    a, b = (row["generated"]["lip_sync"] for row in results["per_clip"])
    assert results["standard_errors"]["generated"]["lip_sync"] == pytest.approx(abs(a - b) / 2)
    assert results["standard_errors"]["generated"]["identity_ssim"] == pytest.approx(0, abs=1e-12)
    json.dumps(results, allow_nan=False)  # plain JSON: no NaN or infinity


def test_controls_are_low(results):
    frozen = results["metrics"]["reference_repeated"]
    # a still mouth and head: their correlations are undefined (None), not 0
    assert frozen["lip_sync"] is None and frozen["lip_sync_shuffled"] is None
    assert all(row["reference_repeated"]["lip_sync"] is None for row in results["per_clip"])
    assert frozen["head_speed_spearman"] is None
    assert frozen["seam_ratio"] is None  # nothing moves
    assert 10 < frozen["identity_psnr"] < 40 and frozen["identity_ssim"] < 0.99


def test_table(results):
    table = evaluate.format_table(results)
    lines = table.splitlines()
    pairs = [keys for *_, keys in summary.PAIRED_WITHIN]
    assert len(lines) == 1 + len(summary.FIGURES) + len(pairs) + sum(map(len, pairs))
    assert "lip sync (Pearson)" in lines[1] and "ground truth" in lines[0]
    assert lines[1].split()[-1] == "undefined"  # reference repeated: Pearson of a constant
    psnr = lines[3].split("  ")
    cells = [c.strip() for c in psnr if c.strip()]
    assert cells[0] == "identity PSNR (dB)" and cells[1:3] == ["-", "-"]  # infinite
    for cell, video in zip(cells[3:], ("autoencoded", "reference_repeated")):
        value, se = (float(v) for v in cell.split(" ± "))
        assert value == round(results["metrics"][video]["identity_psnr"], 2)
        assert se == round(results["standard_errors"][video]["identity_psnr"], 2)
    identity = lines[1 + len(summary.FIGURES) + 1].split()
    difference = results["paired"]["generated - reference repeated"]["identity_psnr"]
    assert identity[:3] == ["identity", "PSNR", "(dB)"] and difference["difference"] is None


def test_paired_with(tmp_path, results, corpus, capsys):
    """--paired-with takes only an earlier evaluation of the same clips, before generating."""
    earlier = tmp_path / "earlier.json"
    earlier.write_text(json.dumps(results))
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**results, "per_clip": results["per_clip"][:1]}))
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"per_clip": [{"name": "x", "generated": {"lip_sync": 0.5}}]}))
    paths = evaluate.find_clips(corpus)
    assert evaluate.read_results(earlier, paths, None)["clips"] == 2
    for path, message in ((other, "results of other clips"), (old, "not the results")):
        assert main(["evaluate", "--data", str(corpus), "--paired-with", str(path)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(path) in err[0] and message in err[0]
    same = summary.paired(results["per_clip"], "generated", results["per_clip"], "ground_truth",
                          tuple(results["speed_centers"]))  # fmt: skip
    assert same["lip_sync"]["difference"] == pytest.approx(0.0)


def test_autoencoded_truth_is_the_models_round_trip(results, corpus):
    """The 'GT autoencoded' video: truth frames -> encode (mean) -> decode with the model's VAE."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        pipe = EMOPipeline.from_pretrained(None, TINY_CONFIG)
    clip = evaluate.load_clip(evaluate.find_clips(corpus)[0], seconds=0.4)
    job = pipe.prepare(clip.frames[0], (clip.wave, clip.sample_rate), resolution=96)
    truth, _ = evaluate.cut(clip.frames, clip.boxes, job.reference.crop, 96)
    got = pipe.autoencode(job, truth)
    vae, params = AutoencoderKL(pipe.config.model.vae), pipe.model.params["vae"]
    want = np.asarray(decode_images(vae, params, encode_images(vae, params, truth)))
    assert got.shape == truth.shape == (10, 96, 96, 3) and got.dtype == np.uint8
    assert np.abs(got.astype(int) - want).max() <= 1
    ceiling = results["metrics"]["autoencoded"]
    assert ceiling["identity_psnr"] < 30 and ceiling["lip_sync"] < 0.95  # a random tiny VAE


def test_speed_curve_and_clip_loading(corpus):
    assert evaluate.speed_curve(np.arange(60.0), 25) == [5.5, 24.5, 48.5]
    clip = evaluate.load_clip(sorted(corpus.glob("*.json"))[0], seconds=1.0)
    assert clip.frames.shape == (25, 96, 96, 3) and clip.wave.shape == (25 * 640,)
    assert clip.opening.shape == clip.speed.shape == (25,) and clip.boxes.shape == (25, 4)


def test_command_takes_generates_sampling_options():
    argv = ["evaluate", "--data", "d", "--guidance", "2.5", "--audio-guidance", "6", "--steps", "7"]
    options = sampling_options(build_parser().parse_args(argv))
    assert options == {
        "steps": 7,
        "sampler": None,
        "guidance_scale": 2.5,
        "audio_guidance_scale": 6.0,
        "seed": 0,
    }
    assert Options(**options).audio_guidance_scale == 6.0  # the pipeline's own field names


def test_command_errors(tmp_path, capsys):
    """(The other bad inputs of evaluate are rows of tests/test_bad_inputs.py.)"""
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.json").write_text(json.dumps({"fps": 25, "frames": {}}))
    (bad / "x.mp4").write_bytes(b"")
    assert main(["evaluate", "--data", str(bad)]) == 2
    assert "x.json: not a corpus truth file" in capsys.readouterr().err


@pytest.mark.slow
def test_command_with_random_weights(tmp_path, corpus, capsys):
    out = tmp_path / "results.json"
    code = main(
        ["evaluate", "--data", str(corpus), "--clips", "1", "--seconds", "1", "--steps", "1"]
        + ["--resolution", "64", "--out", str(out), "--no-progress"]
    )
    assert code == 0
    results = json.loads(out.read_text())
    assert results["clips"] == 1 and results["resolution"] == 64
    assert results["checkpoint"] == resolve_checkpoint(None).source  # the built-in default
    assert math.isfinite(results["metrics"]["generated"]["identity_ssim"])
    assert results["metrics"]["ground_truth"]["lip_sync"] > 0.9
    assert "lip sync (Pearson)" in capsys.readouterr().out
