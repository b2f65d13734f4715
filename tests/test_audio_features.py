"""Audio front end: decoding, normalisation, frame count, time alignment, window, chunking,
errors; wav2vec2 features checked against transformers' hidden states."""

import dataclasses
from fractions import Fraction

import av
import numpy as np
import pytest
import soundfile as sf
import torch
from transformers import Wav2Vec2Config as TorchConfig
from transformers import Wav2Vec2FeatureExtractor
from transformers import Wav2Vec2Model as TorchModel

from emo_jax.audio.encoders import MelEncoder, Wav2Vec2Encoder, bucket_length
from emo_jax.audio.features import (
    AudioFeatures,
    SilentAudioWarning,
    normalize,
    num_frames,
    window_frames,
)
from emo_jax.audio.io import load_audio
from emo_jax.config import AudioConfig
from emo_jax.errors import InputError
from emo_jax.models.audio_proj import window_shape
from emo_jax.models.wav2vec2 import Wav2Vec2Model

MEL = AudioConfig(encoder="mel", n_mels=16)


def speechlike(seconds: float, sr: int = 16000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * sr)) / sr
    tone = np.sin(2 * np.pi * (150 + 100 * np.sin(2 * np.pi * 3 * t)) * t)
    return (
        0.3 * tone * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)) + 0.01 * rng.standard_normal(len(t))
    ).astype(np.float32)


def encode_file(path, codec: str, wave: np.ndarray, rate: int) -> None:
    """Writes mono `wave` with PyAV's encoder `codec` in whatever sample format it takes."""
    types = {"flt": (np.float32, 1), "dbl": (np.float64, 1), "s16": (np.int16, 2**15 - 1)}
    types["s32"] = (np.int32, 2**31 - 1)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.layout = "mono"
        fmt = stream.codec_context.format.name
        dtype, scale = types[fmt.rstrip("p")]
        step = stream.codec_context.frame_size or 1024
        for i in range(0, len(wave), step):
            data = (wave[i : i + step] * scale).astype(dtype)[None]
            frame = av.AudioFrame.from_ndarray(data, format=fmt, layout="mono")
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.mark.parametrize("suffix, codec", [(".mp3", "libmp3lame"), (".m4a", "aac")])
def test_load_audio_decodes_and_resamples_compressed_files(suffix, codec, tmp_path):
    wave = speechlike(1.0, 44100)
    path = tmp_path / f"a{suffix}"
    encode_file(path, codec, wave, 44100)
    got = load_audio(path, 16000)
    assert got.dtype == np.float32 and abs(len(got) - 16000) < 1200  # encoder padding
    assert 0.1 < np.abs(got).max() <= 1.0


def test_load_audio_stereo_flac_to_mono_16k(tmp_path):
    left = speechlike(0.5, 22050)
    sf.write(tmp_path / "a.flac", np.stack([left, left], 1), 22050)
    got = load_audio(tmp_path / "a.flac", 16000)
    assert len(got) == 8000
    assert (
        np.corrcoef(
            got[100:-100],
            np.interp(np.arange(8000) / 16000, np.arange(len(left)) / 22050, left)[100:-100],
        )[0, 1]
        > 0.99
    )


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: None, "audio file not found"),
        (lambda p: p.write_text("hello, not audio"), "not an audio file"),
        (lambda p: p.write_bytes(b""), r"not an audio file \(an empty file\)"),
        (
            lambda p: sf.write(p, np.zeros(300, np.float32), 16000, format="WAV"),
            "shorter than one video frame",
        ),
    ],
)
def test_bad_audio_files_are_one_line_errors(make, message, tmp_path):
    path = tmp_path / "in.wav"
    make(path)
    with pytest.raises(InputError, match=message) as e:
        AudioFeatures(MEL).load(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_silent_audio_warns_and_still_works(tmp_path):
    sf.write(tmp_path / "s.wav", np.zeros(16000, np.float32), 16000)
    features = AudioFeatures(MEL)
    with pytest.warns(SilentAudioWarning, match="silent"):
        out = features(tmp_path / "s.wav")
    assert out.shape == (25, 5, 4, 16) and np.isfinite(out).all()


def test_normalisation_matches_wav2vec2_feature_extractor():
    wave = speechlike(0.7) * 0.2 + 0.05
    want = Wav2Vec2FeatureExtractor(do_normalize=True)(wave, sampling_rate=16000)["input_values"][0]
    np.testing.assert_allclose(normalize(wave), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "samples, fps, frames",
    [
        (60 * 16000, 25, 1500),
        (16320, 25, 26),  # 25.5 frames: halves round up
        (16319, 25, 25),
        (16001, 25, 25),
        (12345, 25, 19),
        (640, 25, 1),
        (3 * 16000 + 100, 30, 90),
        (16000 + 800, 30, 32),  # 31.5
    ],
)
def test_frame_count_rule(samples, fps, frames):
    assert num_frames(samples, 16000, fps) == frames
    assert frames == int(Fraction(samples * fps, 16000) + Fraction(1, 2))


@pytest.mark.parametrize("samples", [60 * 16000, 16320, 16319, 12345, 640, 33333])
def test_features_have_one_entry_per_video_frame(samples):
    wave = np.random.default_rng(samples).standard_normal(samples).astype(np.float32)
    out = AudioFeatures(MEL)(wave)
    assert out.shape == (num_frames(samples, 16000, 25), *window_shape(MEL))
    assert window_shape(MEL) == (5, 4, 16)


def test_window_repeats_the_end_frames():
    x = np.arange(6, dtype=np.float32)[:, None] * np.ones((1, 3))
    w = window_frames(x, 2)
    assert w.shape == (6, 5, 3)
    assert w[:, :, 0].tolist() == [
        [0, 0, 0, 1, 2],
        [0, 0, 1, 2, 3],
        [0, 1, 2, 3, 4],
        [1, 2, 3, 4, 5],
        [2, 3, 4, 5, 5],
        [3, 4, 5, 5, 5],
    ]
    assert window_frames(x[:1], 2)[:, :, 0].tolist() == [[0, 0, 0, 0, 0]]


def test_mel_chunks_equal_one_pass_and_streamed_file_equals_memory(tmp_path):
    wave = normalize(speechlike(7.3))
    whole = AudioFeatures(dataclasses.replace(MEL, chunk_seconds=100))
    chunked = AudioFeatures(dataclasses.replace(MEL, chunk_seconds=0.9), whole.encoder)
    a = np.concatenate(list(whole.iter_windows(wave)))
    b = np.concatenate(list(chunked.iter_windows(wave)))
    np.testing.assert_array_equal(a, b)
    assert chunked.write(wave, tmp_path / "f.npy") == a.shape
    np.testing.assert_array_equal(np.load(tmp_path / "f.npy"), a)
    shape = chunked.write(wave, tmp_path / "p.npy", per_frame=True, dtype="float16")
    per_frame = np.load(tmp_path / "p.npy")
    assert per_frame.dtype == np.float16 and shape == per_frame.shape == (a.shape[0], 4, 16)
    np.testing.assert_allclose(per_frame, a[:, 2], rtol=1e-3, atol=1e-3)


def test_mel_subframes_sample_the_frame_interval():
    """Sub-frame i of video frame f is the log-mel interpolated at (f + (i + 1/2)/4) / fps."""
    wave = normalize(speechlike(1.0))
    enc = MelEncoder(16000, 400, 160, 16, subframes=4)
    mel = enc.encode(wave)[:, 0]  # frame j centred at sample 160 j + 199.5
    out = AudioFeatures(MEL, enc)(wave)[:, 2]  # (25, 4, 16)
    t = (np.arange(25)[:, None] + (np.arange(4) + 0.5) / 4) / 25 * 16000
    pos = np.clip((t - 199.5) / 160, 0, len(mel) - 1)
    want = np.stack(
        [
            np.stack([np.interp(p, np.arange(len(mel)), mel[:, b]) for b in range(16)], -1)
            for p in pos.reshape(-1)
        ]
    )
    np.testing.assert_allclose(out.reshape(-1, 16), want, rtol=1e-5, atol=1e-5)


def save_tiny_wav2vec2(folder, **overrides) -> TorchModel:
    """A tiny random transformers wav2vec2 with wav2vec2-base's 20 ms hop and 25 ms window."""
    torch.manual_seed(0)
    cfg = TorchConfig(
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=48,
        conv_dim=(16, 16, 16),
        conv_stride=(5, 4, 16),
        conv_kernel=(10, 19, 16),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        **overrides,
    )
    model = TorchModel(cfg).eval()
    model.save_pretrained(folder)
    return model


@pytest.fixture(scope="module")
def tiny_wav2vec2(tmp_path_factory):
    folder = tmp_path_factory.mktemp("w2v")
    return save_tiny_wav2vec2(folder), folder


def test_wav2vec2_features_are_transformers_hidden_states_at_frame_centres(tiny_wav2vec2):
    model, folder = tiny_wav2vec2
    cfg = AudioConfig(wav2vec2_path=str(folder), layers=(1, 3, 0))
    features = AudioFeatures(cfg)
    enc = features.encoder
    assert (enc.hop, enc.receptive_field) == (320, 400)
    raw = speechlike(2.37)
    out = features(raw)
    frames = num_frames(len(raw), 16000, 25)
    assert out.shape == (frames, 5, 3, 32)
    assert window_shape(cfg) == features.window_shape == (5, 3, 32)
    assert window_shape(AudioConfig(wav2vec2_path=str(folder), window=1)) == (3, 3, 32)
    assert window_shape(AudioConfig()) == (5, 12, 768)  # no folder: wav2vec2-base
    with torch.no_grad():
        hidden = model(
            torch.from_numpy(normalize(raw))[None], output_hidden_states=True
        ).hidden_states
    ref = np.stack([hidden[i][0].numpy() for i in (1, 3, 0)], 1)  # (T, 3, 32)
    pos = np.clip(((np.arange(frames) + 0.5) / 25 * 16000 - 199.5) / 320, 0, len(ref) - 1)
    i0 = np.floor(pos).astype(int)
    i1 = np.minimum(i0 + 1, len(ref) - 1)
    w = (pos - i0)[:, None, None]
    want = ref[i0] * (1 - w) + ref[i1] * w
    np.testing.assert_allclose(out[:, 2], want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    np.testing.assert_array_equal(out[1:, 1], out[:-1, 2])  # window entry k-1 is the previous frame


def test_wav2vec2_long_audio_in_chunks_matches_one_pass(tiny_wav2vec2, tmp_path):
    """Chunks of 1 s with 0.5 s of context against one pass over all 4.5 s.

    Where the encoder is local, each chunk's context holds all that a frame depends on, so the
    chunked features equal one pass at every frame, seams included: hidden state 0 of a
    layer-norm feature encoder (per-frame norm, then a positional convolution of +-8 frames).
    Attention layers span the chunk (and so does a group-norm feature encoder's GroupNorm),
    so there every frame differs from one pass: this random model attends almost uniformly,
    measured 0.17 of the features' norm, bounded at 0.25.
    """
    wave = normalize(speechlike(4.5))

    def chunked_and_whole(folder, layers=None):
        cfg = AudioConfig(
            wav2vec2_path=str(folder), layers=layers, chunk_seconds=1.0, context_seconds=0.5
        )
        blocks = list(AudioFeatures(cfg).iter_windows(wave))
        whole = AudioFeatures(dataclasses.replace(cfg, chunk_seconds=100))
        return blocks, np.concatenate(list(whole.iter_windows(wave)))

    save_tiny_wav2vec2(tmp_path, feat_extract_norm="layer", conv_bias=True)
    blocks, whole = chunked_and_whole(tmp_path, layers=(0,))
    out = np.concatenate(blocks)
    assert len(blocks) >= 5 and out.shape == whole.shape
    assert out.shape == (num_frames(len(wave), 16000, 25), 5, 1, 32)
    assert np.abs(out - whole).max() <= 1e-5 * np.abs(whole).max()  # measured 3e-7

    blocks, whole = chunked_and_whole(tiny_wav2vec2[1])
    out = np.concatenate(blocks)
    assert out.shape == whole.shape == (len(out), 5, 3, 32)
    assert np.linalg.norm(out - whole) <= 0.25 * np.linalg.norm(whole)


def test_wav2vec2_encoder_pads_to_few_shapes_without_changing_frames(tiny_wav2vec2):
    _, folder = tiny_wav2vec2
    module, params = Wav2Vec2Model.from_pretrained(folder)
    enc = Wav2Vec2Encoder(module, params)
    wave = normalize(speechlike(1.3))
    direct = module.apply({"params": params}, wave[None])
    want = np.stack([h[0] for h in direct.hidden_states[1:]], 1)
    got = enc.encode(wave)
    assert bucket_length(len(wave), 320) > len(wave)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    sizes = {bucket_length(n, 320) for n in range(16000, 32000, 37)}
    assert len(sizes) <= 5 and all(
        0 <= s - n < n / 4 + 320 for n in (16000, 31999) for s in [bucket_length(n, 320)]
    )


def test_config_errors_name_the_setting():
    with pytest.raises(InputError, match="wav2vec2_path"):
        AudioFeatures(AudioConfig())
    with pytest.raises(InputError, match="model.audio.encoder"):
        AudioFeatures(AudioConfig(encoder="hubert"))
