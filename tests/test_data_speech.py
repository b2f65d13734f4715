"""The speaking-face corpus: espeak-ng speech with phoneme times, sentences and their split,
the viseme table and co-articulation, and the espeak audio source of `emo-jax synth`."""

import json
import time

import numpy as np
import pytest

from emo_jax.cli import main
from emo_jax.data import sentences, speech, synth, visemes
from emo_jax.errors import InputError

HELDOUT = synth.HELDOUT_SEED_BASE


@pytest.fixture(scope="module")
def clip():
    return synth.render_clip(
        synth.make_identity(HELDOUT + 2), 3.0, 64, seed=1, audio_source="espeak"
    )


def test_speak_times_phonemes():
    utt = speech.speak("Bob bought a map.", speech.Voice("en-us+m3", rate=170))
    assert utt.sample_rate == 22050 and utt.wave.dtype == np.float32
    duration = len(utt.wave) / utt.sample_rate
    assert 0.8 < duration < 3.0 and 0.1 < np.abs(utt.wave).max() <= 1.0
    names = [name.lstrip("',") for name, _ in utt.phonemes]
    assert names[:3] == ["b", "0", "b"]  # B-o-b
    assert "m" in names and "p" in names
    starts = [start for _, start in utt.phonemes]
    assert starts == sorted(starts) and 0 <= starts[0] and starts[-1] <= duration
    again = speech.speak("Bob bought a map.", speech.Voice("en-us+m3", rate=170))
    assert np.array_equal(utt.wave, again.wave) and utt.phonemes == again.phonemes
    faster = speech.speak("Bob bought a map.", speech.Voice("en-us+m3", rate=260))
    assert len(faster.wave) < 0.8 * len(utt.wave)
    with pytest.raises(ValueError, match="no voice"):
        speech.speak("hi", speech.Voice("xx-nonexistent"))


def test_breathy_voice_is_reproducible():
    voice = speech.Voice("en-029+f5")  # f5 is breathy: noise from espeak's random generator
    first = speech.speak("Bob bought a map.", voice)
    time.sleep(1.1)  # espeak seeds that generator from the clock's seconds
    assert np.array_equal(first.wave, speech.speak("Bob bought a map.", voice).wave)


def test_resample_keeps_a_tone():
    t = np.arange(22050) / 22050
    out = speech.resample(np.sin(2 * np.pi * 440 * t).astype(np.float32), 22050, 16000)
    assert len(out) == 16000
    spectrum = np.abs(np.fft.rfft(out))
    assert np.argmax(spectrum) == 440  # 1 Hz bins


def test_voices_per_identity():
    voices = [
        speech.voice_for(
            np.random.default_rng([s, 13]), s % 2 == 0, 200.0 if s % 2 == 0 else 110.0, 1.0
        )
        for s in range(12)
    ]
    assert len({v.name for v in voices}) > 4
    assert all(("+f" in v.name) == (i % 2 == 0) for i, v in enumerate(voices))
    assert all(0 <= v.pitch <= 100 and 0 <= v.range <= 100 and v.rate == 160 for v in voices)


def test_sentences_are_deterministic_and_split():
    a = [sentences.sentence(np.random.default_rng(5), "train") for _ in range(3)]
    assert a[0] == a[1] == a[2]
    rng = np.random.default_rng(0)
    train = {sentences.sentence(rng, "train") for _ in range(300)}
    rng = np.random.default_rng(0)
    heldout = {sentences.sentence(rng, "heldout") for _ in range(300)}
    assert len(train) > 250 and len(heldout) > 250  # varied
    assert not train & heldout
    assert {sentences.split_of(s) for s in train} == {"train"}
    assert {sentences.split_of(s) for s in heldout} == {"heldout"}
    with pytest.raises(ValueError):
        sentences.sentence(rng, "test")


def test_viseme_table_covers_espeak_english():
    rng = np.random.default_rng(1)
    seen = set()
    for i in range(40):
        voice = speech.voice_for(rng, i % 2 == 0, 200.0, 1.0)
        seen |= {name for name, _ in speech.speak(sentences.sentence(rng), voice).phonemes}
    unknown = {name for name in seen if visemes.target(name) is None}
    assert unknown <= {";"}  # a modifier, not a sound
    assert visemes.target("'aI2").viseme == "open" and visemes.target("m").viseme == "closed"
    assert visemes.target("u:").rounding == 1.0 and visemes.target("f").teeth == 1.0
    assert visemes.target("_:").viseme == "rest"
    assert {t.viseme for t in visemes.TABLE.values()} == set(visemes.VISEMES)


def test_mouth_track_coarticulates():
    phonemes = [("_", 0.0), ("m", 0.2), ("'a", 0.3), ("u:", 0.6), ("_", 0.9)]
    track = visemes.mouth_track(phonemes, 30, 25.0)  # 1.2 s
    assert track.opening.shape == track.rounding.shape == track.teeth.shape == (30,)
    frame = lambda t: int(t * 25)  # noqa: E731
    assert track.viseme[frame(0.22)] == "closed" and track.opening[frame(0.22)] < 0.05
    assert track.viseme[frame(0.45)] == "open" and track.opening[frame(0.45)] > 0.85
    assert track.phoneme[frame(0.75)] == "u:" and track.rounding[frame(0.75)] > 0.9
    assert track.viseme[-1] == "rest" and track.opening[-1] < 0.05
    assert np.abs(np.diff(track.opening)).max() < 0.6  # crossfades, no jump from 0 to 0.9
    # a short lip closure still shuts: it starts CLOSURE before the next phoneme
    short = visemes.mouth_track([("'a", 0.0), ("b", 0.4), ("'a", 0.42)], 25, 25.0)
    assert short.opening.min() < 0.05 and "closed" in short.viseme


def test_espeak_clip(clip):
    n = 75
    assert clip.frames.shape == (n, 64, 64, 3) and clip.audio.shape == (n * 640,)
    s = clip.speech
    assert len(s.viseme) == len(s.phoneme) == n and s.rounding.shape == s.teeth.shape == (n,)
    assert set(s.viseme) <= set(visemes.VISEMES) and len(set(s.viseme)) >= 4
    assert s.info["voice"]["name"].startswith("en")
    said = s.info["sentences"]
    assert said and all(sentences.split_of(x["text"]) == "heldout" for x in said)
    # the mouth opens while there is sound and rests in silence
    rms = np.sqrt((clip.audio.reshape(n, 640) ** 2).mean(axis=1))
    assert rms[np.array(s.viseme) == "open"].mean() > 5 * rms[clip.mouth < 0.03].mean()
    again = synth.render_clip(synth.make_identity(HELDOUT + 2), 3.0, 64, 1, "espeak")
    assert np.array_equal(again.frames, clip.frames) and again.speech.phoneme == s.phoneme


def test_mouth_shapes_are_drawn():
    painter = synth._Painter(synth.make_identity(4), 96)
    pose = (np.zeros(3), np.zeros(2))
    shut, _ = painter.draw(*pose, 0.0, 0.0)
    wide, _ = painter.draw(*pose, 1.0, 0.0)
    round_, _ = painter.draw(*pose, 0.5, 0.0, rounding=1.0)
    spread, _ = painter.draw(*pose, 0.5, 0.0)
    teeth, _ = painter.draw(*pose, 1.0, 0.0, teeth=1.0)
    dark = lambda img: int((img.sum(axis=2) < 100).sum())  # noqa: E731
    white = lambda img: int((img.min(axis=2) > 225).sum())  # noqa: E731
    assert dark(shut) < dark(round_) < dark(spread) < dark(wide)
    assert white(teeth) >= 5 and white(wide) == 0


def test_write_heldout_corpus(tmp_path):
    code = main(
        ["synth", "--out", str(tmp_path), "--identities", "2", "--seconds", "1", "--size", "48"]
        + ["--split", "heldout", "--workers", "1", "--no-progress"]
    )
    assert code == 0
    assert sorted(p.name for p in tmp_path.glob("*.mp4")) == [
        "heldout_id0000_clip00.mp4",
        "heldout_id0001_clip00.mp4",
    ]
    truth = json.loads((tmp_path / "heldout_id0000_clip00.json").read_text())
    assert truth["split"] == "heldout" and truth["audio_source"] == "espeak"
    assert truth["identity"]["seed"] == HELDOUT
    assert {"voice", "sentences"} <= set(truth)
    frames = truth["frames"]
    assert set(frames) == {
        "mouth_open", "mouth_round", "teeth", "viseme", "phoneme", "angles", "speed", "box"
    }  # fmt: skip
    assert all(len(v) == 25 for v in frames.values())
    assert synth.split_of_identity(HELDOUT) == "heldout" and synth.split_of_identity(5) == "train"


def test_bad_corpus_arguments(tmp_path):
    with pytest.raises(InputError, match="split"):
        synth.make_corpus(tmp_path, 1, 1.0, size=48, split="test", progress=False)
    with pytest.raises(InputError, match="--seed"):
        synth.make_corpus(tmp_path, 1, 1.0, size=48, seed=-1, progress=False)
    assert main(["synth", "--out", str(tmp_path), "--audio", "piano", "--no-progress"]) == 2
