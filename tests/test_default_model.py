"""The built-in default model: the README's main command (no weights given) writes an mp4 with
sound in which the mouth follows the speech, read by the evaluation's mouth measure and
compared with the known phoneme openings of the shipped sentence."""

import warnings

import av
import numpy as np
import pytest

from emo_jax.cli import main
from emo_jax.data.examples import SAMPLE_RATE
from emo_jax.data.examples import speech as example_speech
from emo_jax.eval.evaluate import read_video
from emo_jax.eval.metrics import pearson
from emo_jax.faces.detect import HaarBackend
from emo_jax.pipeline import RandomWeightsWarning
from emo_jax.pipeline.loading import DEFAULT_MODEL, resolve_checkpoint

LIP_SYNC_MIN = 0.7  # measured 0.892 on this sentence (seed 0); held-out mean in the README


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """`emo-jax generate --out DIR/demo.mp4`: the README's main command."""
    out = tmp_path_factory.mktemp("demo") / "demo.mp4"
    frames = out.parent / "frames"
    with warnings.catch_warnings():
        warnings.simplefilter("error", RandomWeightsWarning)  # a trained model, not the fallback
        code = main(["generate", "--out", str(out), "--frames-dir", str(frames), "--no-progress"])
    return code, out


def read_mp4(path):
    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    with av.open(str(path)) as container:
        audio = np.concatenate(
            [f.to_ndarray().reshape(-1) for f in container.decode(audio=0)]
        )  # mono
        rate = container.streams.audio[0].rate
    return np.stack(frames), audio, rate


def test_default_model_is_the_shipped_trained_one():
    with warnings.catch_warnings():
        warnings.simplefilter("error", RandomWeightsWarning)
        model = resolve_checkpoint(None)
    assert model.source.startswith("built-in default model") and model.random_seed is None
    assert model.card["trained_on"] and model.card["recipe"] == "configs/default/recipe.yaml"
    assert (DEFAULT_MODEL / "card.json").is_file()
    size = sum(p.stat().st_size for p in DEFAULT_MODEL.rglob("*") if p.is_file())
    assert size < 60 * 2**20  # "a few tens of MB at most"
    assert model.config.data.resolution >= 96 and model.config.model.vae.sample_size >= 96


def test_main_command_writes_mp4_with_sound(demo):
    code, out = demo
    assert code == 0 and out.is_file()
    frames, audio, rate = read_mp4(out)
    truth = example_speech()
    assert len(frames) == len(truth.opening)  # 25 fps over the sentence
    assert frames.shape[1:] == (96, 96, 3)
    assert abs(len(audio) / rate - len(truth.wave) / SAMPLE_RATE) < 0.05


def test_mouth_follows_the_speech(demo):
    _, out = demo
    frames, _, _ = read_mp4(out)
    truth = example_speech().opening
    fallback = HaarBackend()(frames[0])  # cascade convention, as read_video wants
    opening = read_video(frames, fallback).opening
    r = pearson(opening, truth[: len(opening)])
    assert r >= LIP_SYNC_MIN, f"mouth vs phoneme openings: Pearson {r:.3f}"
    # and not by chance: against the opening reversed in time it does not follow
    assert pearson(opening, truth[: len(opening)][::-1]) < r - 0.3


def test_info_says_which_model(capsys):
    assert main(["info", "--model", "--quiet-config"]) == 0
    out = capsys.readouterr().out
    assert "model: built-in default model" in out and "trained_on:" in out


HELDOUT_PERSON = 4  # the held-out person whose lip sync fell most when the crop changed


def test_heldout_person_is_cut_as_the_model_was_trained(tmp_path):
    """The built-in model on a held-out person (4 s): the portrait is cut by the detector its
    training data was cut with (`data.detector` of its config: haar); cut from another back
    end's box the mouth stops following (measured 0.87 -> -0.05 on this person's 6 s)."""
    from emo_jax.data import synth
    from emo_jax.eval import evaluate
    from emo_jax.pipeline import EMOPipeline

    synth.make_corpus(
        tmp_path, HELDOUT_PERSON + 1, 4.0, size=128, split="heldout", audio_source="espeak",
        progress=False,
    )  # fmt: skip
    clip = evaluate.find_clips(tmp_path)[HELDOUT_PERSON:]
    results = evaluate.evaluate(EMOPipeline.from_pretrained(None), clip)
    assert results["metrics"]["generated"]["lip_sync"] >= LIP_SYNC_MIN
