"""`emo-jax generate` with a Hallo bundle: the fixture's net.pth (tests/fixtures/hallo-tiny)
converted with a tiny wav2vec2 of its width, run on a photograph and a wav; and the pieces
against independent references: Hallo's wav2vec2 interpolation (torch, transformers), its
audio windows, and the pipeline's first guided DDIM step against Hallo's recorded one."""

import dataclasses
import json
import math
import shutil
from pathlib import Path

import av
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile
import torch

from emo_jax.audio.features import window_frames
from emo_jax.audio.hallo import HalloAudioFeatures, audio_frames, padded_frames
from emo_jax.cli import main
from emo_jax.config import AudioConfig, Config
from emo_jax.diffusion.samplers import ddim
from emo_jax.interop import hallo
from emo_jax.pipeline import EMOPipeline, HalloPipeline, Options
from emo_jax.pipeline.hallo import HalloFunctions, HalloInputs, HalloJob

HERE = Path(__file__).parent
FIXTURE = HERE / "fixtures" / "hallo-tiny"
PORTRAIT = HERE.parent / "emo_jax" / "assets" / "portrait.png"
SR = 16000


@pytest.fixture(scope="module")
def wav2vec2_dir(tmp_path_factory) -> Path:
    """A tiny transformers Wav2Vec2Model of the fixture's audio width (modules.json: 12 layers
    of 16 channels; Hallo takes hidden_states[1:], one per layer), random weights."""
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    ap = json.loads((FIXTURE / "modules.json").read_text())["audioproj"]
    cfg = Wav2Vec2Config(
        hidden_size=ap["channels"],
        num_hidden_layers=ap["blocks"],
        num_attention_heads=2,
        intermediate_size=32,
        conv_dim=(16,) * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("w2v") / "wav2vec2"
    Wav2Vec2Model(cfg).eval().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def bundle(wav2vec2_dir, tmp_path_factory) -> Path:
    dst = tmp_path_factory.mktemp("hallo") / "bundle"
    args = ["convert", "--src", str(FIXTURE / "net.pth"), "--src-format", "hallo"]
    assert main([*args, "--wav2vec2", str(wav2vec2_dir), "--dst", str(dst)]) == 0
    return dst


def speech(seconds: float) -> np.ndarray:
    """A voiced-sounding test signal: a 150 Hz buzz with a syllable-rate envelope."""
    t = np.arange(round(seconds * SR)) / SR
    buzz = np.sign(np.sin(2 * np.pi * 150 * t)) * 0.3 + 0.1 * np.sin(2 * np.pi * 900 * t)
    return (buzz * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))).astype(np.float32)


def test_wav2vec2_interpolation_matches_hallo(wav2vec2_dir):
    """Hallo's Wav2VecModel.forward (transformers + torch's F.interpolate, align_corners)."""
    from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2Model

    wave = speech(0.9)
    clip = 4
    feats, frames = HalloAudioFeatures(AudioConfig(wav2vec2_path=str(wav2vec2_dir)))(wave, clip)
    assert frames == math.ceil(0.9 * 25) == 23 and feats.shape == (24, 12, 16)
    # Hallo's AudioProcessor.preprocess, step by step.
    x = np.squeeze(Wav2Vec2FeatureExtractor(do_normalize=True)(wave, sampling_rate=SR).input_values)
    seq = math.ceil(len(x) / SR * 25)
    x = torch.nn.functional.pad(torch.from_numpy(x), (0, (clip - seq % clip) * (SR // 25)))
    seq += clip - seq % clip
    model = Wav2Vec2Model.from_pretrained(wav2vec2_dir).eval()
    with torch.no_grad():
        conv = model.feature_extractor(x[None]).transpose(1, 2)
        conv = torch.nn.functional.interpolate(
            conv.transpose(1, 2), size=seq, align_corners=True, mode="linear"
        ).transpose(1, 2)
        hidden, _ = model.feature_projection(conv)
        layers = []  # hidden_states[1:]: every layer's output (forward hooks)
        for layer in model.encoder.layers:
            layer.register_forward_hook(
                lambda m, i, o: layers.append(o[0] if isinstance(o, tuple) else o)
            )
        model.encoder(hidden)
    want = torch.stack(layers, dim=1).squeeze(0).numpy()  # (12, seq, 16)
    want = np.moveaxis(want, 0, 1)  # Hallo's rearrange "b s d -> s b d": (seq, 12, 16)
    assert want.shape == feats.shape
    np.testing.assert_allclose(feats, want, atol=1e-4 * np.abs(want).max())


def test_clip_windows_are_hallos_process_audio_emb():
    """Clip k's windows = Hallo's process_audio_emb of the whole padded track, rows kF..kF+F."""
    feats = np.random.default_rng(0).normal(size=(12, 3, 2)).astype(np.float32)
    job = HalloJob(Config(model=hallo.model_config(FIXTURE)), None, None, None, feats, 10, None, 25)
    assert job.clip_frames == 16 and job.num_clips == 0
    model = dataclasses.replace(
        job.config.model, emo=dataclasses.replace(job.config.model.emo, n_frames=4)
    )
    job = dataclasses.replace(job, config=Config(model=model))
    assert job.num_clips == 3
    whole = window_frames(feats, 2)
    for k in range(job.num_clips):
        np.testing.assert_array_equal(job.windows(k)[0], whole[k * 4 : (k + 1) * 4])
    assert (audio_frames(14401, SR, 25), padded_frames(23, 4)) == (23, 24)


@pytest.mark.slow  # ~50 s on 2 busy cores (the ReferenceNet + denoiser program compiles)
def test_first_clip_step_reproduces_hallo(bundle):
    """The pipeline's clip function, given Hallo's recorded first-clip inputs (e_*), takes
    its first guided DDIM step to Hallo's `e_latents_step0` (the UNet: within 1e-3, see
    tests/test_hallo.py)."""
    io = dict(np.load(FIXTURE / "io.npz"))
    pipe = EMOPipeline.from_pretrained(bundle)
    assert isinstance(pipe, HalloPipeline)
    cfg = pipe.config
    steps = len(io["e_timesteps"])
    full = ddim(cfg.diffusion, steps)
    np.testing.assert_array_equal(full.timesteps, io["e_timesteps"])
    first = dataclasses.replace(
        full,
        **{
            f.name: getattr(full, f.name)[:1]
            for f in dataclasses.fields(full)
            if isinstance(getattr(full, f.name), np.ndarray)
        },
    )
    fns = HalloFunctions(cfg.model, cfg.diffusion, first)
    emo, vae = pipe.model.params["emo"], pipe.model.params["vae"]
    ref = np.moveaxis(io["e_ref_image"][0], 1, -1)  # (1+M, H, W, 3) in [-1, 1]
    stack = fns.encode(vae, jnp.asarray(ref))
    levels = len(cfg.model.unet.block_out_channels)
    inputs = HalloInputs(
        face_emb=jnp.asarray(io["e_face_emb"]),
        face_region=jnp.asarray(np.moveaxis(io["e_face_region"][0], 0, -1)),
        masks=tuple(
            tuple(jnp.asarray(io[f"e_{r}_mask_{k}"][:1]) for r in ("full", "face", "lip"))
            for k in range(levels)
        ),
        motion_scale=jnp.asarray(io["e_motion_scale"]),
    )
    noise = jnp.moveaxis(jnp.asarray(io["e_initial_latents"]), 1, -1)  # (1, F, h, w, 4)
    audio, scale = jnp.asarray(io["e_audio_windows"]), jnp.float32(io["e_guidance_scale"])
    out = fns.latents(emo, stack, inputs, audio, noise, None, scale)
    want = np.moveaxis(io["e_latents_step0"], 1, -1)
    err = np.abs(np.asarray(out) - want).max() / np.abs(want).max()
    print(f"first guided step: relative error {err:.2e}")
    assert err < 1e-3, f"relative error {err:.2e}"
    # another guidance scale and other region weights: arguments, the same compiled program
    other = inputs._replace(motion_scale=jnp.asarray([1.0, 0.5, 2.0], jnp.float32))
    again = fns.latents(emo, stack, other, audio, noise, None, jnp.float32(1.5))
    assert fns.latents._cache_size() == 1
    assert np.abs(np.asarray(again) - np.asarray(out)).max() > 1e-3 * np.abs(want).max()


def probe(path: Path) -> tuple[int, float, float, bool]:
    """(video frames, video seconds, audio seconds, has audio) of an mp4."""
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        frames = sum(1 for _ in c.decode(v))
        vsec = float(frames / v.average_rate)
    with av.open(str(path)) as c:
        has_audio = bool(c.streams.audio)
        asec = float(c.streams.audio[0].duration * c.streams.audio[0].time_base) if has_audio else 0
    return frames, vsec, asec, has_audio


@pytest.mark.slow  # ~40 s on 2 busy cores (loading the bundle, compiling the clip program)
def test_generate_writes_hallo_video(bundle, tiny_arcface, tmp_path, capsys):
    """`emo-jax generate --checkpoint HALLO_BUNDLE` on a photograph and a wav: 2.x clips of
    the bundle's clip length, trimmed to the audio's frames, with sound."""
    cfg = EMOPipeline.from_pretrained(bundle).config
    f = cfg.model.emo.n_frames
    assert (f, cfg.model.emo.n_motion_frames) == (hallo.CLIP_FRAMES, hallo.MOTION_FRAMES)
    seconds = 1.5  # 38 frames: 2 clips of 16 + 6 of a third
    wav = tmp_path / "speech.wav"
    soundfile.write(wav, speech(seconds), SR)
    out = tmp_path / "v.mp4"
    frames_dir = tmp_path / "frames"
    args = ["generate", "--checkpoint", str(bundle), "--image", str(PORTRAIT)]
    args += ["--audio", str(wav), "--out", str(out), "--steps", "2", "--no-progress"]
    args += ["--frames-dir", str(frames_dir), "--face-model", str(tiny_arcface[0])]
    args += ["--lip-weight", "1.2"]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "zeros" not in captured.err  # the face embedding came from --face-model
    frames, vsec, asec, has_audio = probe(out)
    want = math.ceil(seconds * 25)  # Hallo's frame count
    assert frames == want and has_audio
    assert abs(vsec - want / 25) < 1e-6 and abs(asec - seconds) < 0.05
    assert want == 2 * f + 6 and f"{want} frames in 3 clips" in captured.err
    assert len(list(frames_dir.glob("*.png"))) == want
    shutil.rmtree(frames_dir)


def test_face_inputs_as_hallo_forms_them(tiny_arcface):
    """Face embedding: the recognition model's raw output (insightface's `face.embedding`, not
    unit length) on the aligned face; face region and the full / face / lip masks from the
    landmarks (dlib), at each UNet level's side; zeros and a warning without a model."""
    from emo_jax.faces import arcface, regions
    from emo_jax.faces.detect import make_detector
    from emo_jax.pipeline.hallo import NoFaceModelWarning, hallo_inputs
    from emo_jax.pipeline.inputs import prepare_reference

    path, net = tiny_arcface
    config = Config(model=hallo.model_config(FIXTURE))
    ref = prepare_reference(PORTRAIT, 64)
    face = make_detector("auto").detect(ref.image)[0]
    inputs = hallo_inputs(ref, config, Options(lip_weight=1.3), arcface.ArcFace(path))
    aligned = arcface.align(ref.image, face.points5)
    blob = torch.from_numpy((aligned.astype(np.float32) - 127.5) / 127.5).permute(2, 0, 1)[None]
    want = net(blob).detach().numpy()
    np.testing.assert_allclose(inputs.face_emb, want, atol=1e-5 * np.abs(want).max())
    assert abs(np.linalg.norm(want) - 1) > 0.1  # unnormalised
    np.testing.assert_allclose(inputs.motion_scale, [1, 1, 1.3], rtol=1e-7)
    r = regions.region_masks(face.landmarks, 64, 64)
    np.testing.assert_array_equal(inputs.face_region, np.repeat(r["face_region"][..., None], 3, 2))
    assert [m.shape for m in inputs.masks[0]] == [(1, 64)] * 3
    assert [m.shape for m in inputs.masks[3]] == [(1, 1)] * 3
    full, face_mask, lip = (m.reshape(8, 8) for m in inputs.masks[0])  # latent side 8
    np.testing.assert_allclose(lip, cv2_area(r["lip"], 8), atol=1e-6)
    np.testing.assert_allclose(full, cv2_area(r["background"], 8), atol=1e-6)
    with pytest.warns(NoFaceModelWarning, match="zeros"):
        plain = hallo_inputs(ref, config, Options())
    assert not plain.face_emb.any() and plain.face_emb.shape == (1, 512)


def cv2_area(mask: np.ndarray, side: int) -> np.ndarray:
    """Box-average downsampling (64, 64) -> (side, side), written out."""
    k = mask.shape[0] // side
    return mask.reshape(side, k, side, k).mean(axis=(1, 3))


def test_arcface_takes_raw_pixels_when_the_graph_normalises(tmp_path):
    """insightface's rule (ArcFaceONNX): a Sub and a Mul among the first nodes -> the model
    takes raw pixels (mean 0, std 1), else (x - 127.5) / 127.5; here a tiny graph
    Sub -> Mul -> spatial mean -> MatMul (3 -> 512), checked in numpy."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime", reason="pip install 'emo-jax[faces]'")
    from onnx import TensorProto, helper, numpy_helper

    from emo_jax.faces import arcface

    w = np.random.default_rng(0).normal(size=(3, 512)).astype(np.float32)
    inits = [
        numpy_helper.from_array(np.array(127.5, np.float32), "mean"),
        numpy_helper.from_array(np.array(1 / 128, np.float32), "scale"),
        numpy_helper.from_array(w, "w"),
    ]
    nodes = [
        helper.make_node("Sub", ["x", "mean"], ["a"], name="Sub_0"),
        helper.make_node("Mul", ["a", "scale"], ["b"], name="Mul_1"),
        helper.make_node("ReduceMean", ["b"], ["c"], name="pool", axes=[2, 3], keepdims=0),
        helper.make_node("MatMul", ["c", "w"], ["y"], name="fc"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 112, 112])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 512])],
        inits,
    )
    path = tmp_path / "mxnet_style.onnx"
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    faces = np.random.default_rng(1).integers(0, 255, (2, 112, 112, 3), dtype=np.uint8)
    got = arcface.ArcFace(path).embed_aligned(faces, normalize=False)
    pooled = (faces.astype(np.float32) - 127.5).mean(axis=(1, 2)) / 128  # raw pixels in
    np.testing.assert_allclose(got, pooled @ w, rtol=1e-4, atol=1e-4)
    assert arcface.input_normalisation(path) == (0.0, 1.0)


def test_hallo_options_refused_for_an_emo_model(tmp_path, capsys):
    """--face-model / --*-weight on an EMO model: one line, exit 2, nothing written."""
    out = tmp_path / "v.mp4"
    args = ["generate", "--out", str(out), "--lip-weight", "1.2", "--face-model", "m.onnx"]
    assert main(args) == 2
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.startswith("emo-jax generate: error:")]
    assert len(lines) == 1 and "Traceback" not in err and not out.exists(), err
    assert "face_model, lip_weight: options of Hallo models" in lines[0]


def test_face_inputs_from_the_box_without_landmarks():
    """The Haar detector gives no landmarks: the face region is the face box enlarged 1.2x
    (Hallo's ratio) and the lips sit in the box's lower middle."""
    from emo_jax.faces import regions
    from emo_jax.faces.detect import make_detector
    from emo_jax.pipeline.hallo import NoFaceModelWarning, hallo_inputs
    from emo_jax.pipeline.inputs import prepare_reference

    model = hallo.model_config(FIXTURE)
    config = Config(model=model)
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, detector="haar"))
    ref = prepare_reference(PORTRAIT, 64, detector="haar")
    face = make_detector("haar").detect(ref.image)[0]
    assert face.landmarks is None
    with pytest.warns(NoFaceModelWarning):
        inputs = hallo_inputs(ref, config, Options())
    box = regions.expand_box(face.box, 1.2, 64, 64)
    np.testing.assert_array_equal(inputs.face_region[..., 0], regions.box_mask(box, 64, 64))
    lip = inputs.masks[0][2].reshape(8, 8)
    y, x = np.unravel_index(np.argmax(lip), lip.shape)
    x0, y0, x1, y1 = face.box / 8  # latent cells
    assert x0 <= x + 0.5 <= x1 and (y0 + y1) / 2 <= y + 0.5 <= y1 + 1
