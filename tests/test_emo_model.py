"""The EMO network at the tiny config: shapes, where each condition acts, identity at init,
memory options, the temporal module against diffusers, loading SD1.5 / AnimateDiff parts."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import MotionAdapter
from diffusers import UNet2DConditionModel as TorchUNet
from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D
from flax.traverse_util import flatten_dict, unflatten_dict

from emo_jax.audio.features import window_frames
from emo_jax.config import load_config, to_dict
from emo_jax.interop.emo_parts import init_from_pretrained
from emo_jax.models.emo import EMOModel, abstract_params, encode_reference, init_params
from emo_jax.models.inventory import COMPONENTS, emo_counts
from emo_jax.nn.conditions import Conditions
from emo_jax.nn.temporal import TemporalTransformer
from emo_jax.weights.convert import ConversionError, torch_to_flax

B, F, N, S = 1, 5, 2, 16  # batch, frames, motion frames, latent size
CFG = load_config("configs/model/tiny.yaml").model


def variant(**emo) -> EMOModel:
    return EMOModel(dataclasses.replace(CFG, emo=dataclasses.replace(CFG.emo, **emo)))


@pytest.fixture(scope="module")
def fresh():
    return init_params(EMOModel(CFG), seed=0)


@pytest.fixture(scope="module")
def trained(fresh):
    """Every zero-initialised leaf made random, as after training: all paths active."""
    leaves, treedef = jax.tree_util.tree_flatten(fresh)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    leaves = [
        0.05 * jax.random.normal(k, x.shape) if not np.any(np.asarray(x)) else x
        for k, x in zip(keys, leaves)
    ]
    return jax.tree_util.tree_unflatten(treedef, leaves)


def inputs(seed: int = 0):
    rng = np.random.default_rng(seed)
    audio_frames = rng.standard_normal((F, CFG.audio.mel_subframes, CFG.audio.n_mels), np.float32)
    return dict(
        latents=rng.standard_normal((B, F, S, S, 4), np.float32),
        reference=rng.standard_normal((B, S, S, 4), np.float32),
        motion=rng.standard_normal((B, N, S, S, 4), np.float32),
        audio_frames=audio_frames,
        audio=window_frames(audio_frames, CFG.audio.window)[None],
        face_mask=(rng.uniform(size=(B, 8 * S, 8 * S)) > 0.5).astype(np.float32),
        speed=rng.uniform(0, 1.5, (B, F)).astype(np.float32),
    )


CONDITIONS = ("reference", "audio", "speed", "motion")  # what `keep` can drop
_ENCODE, _FORWARD = {}, {}


def encode(model: EMOModel, params, reference, motion):
    """`encode_reference`, jitted once per model."""
    if model.config not in _ENCODE:
        _ENCODE[model.config] = jax.jit(lambda p, r, m: encode_reference(model, p, r, m))
    return _ENCODE[model.config](params, reference, motion)


def run(model: EMOModel, params, x: dict, keep=None, features=None, all_keys: bool = True):
    """One denoiser forward (reference features from `encode` unless given), jitted once per
    model: `keep` always holds every condition (True unless given), so that drops share one
    program; all_keys=False passes `keep` as given (None: the no-drop path)."""
    if model.config not in _FORWARD:

        @jax.jit
        def fn(params, x, keep, features):
            return model.apply(
                {"params": params},
                x["latents"],
                jnp.array([321]),
                features,
                x["audio"],
                x["face_mask"],
                x["speed"],
                keep,
            )

        _FORWARD[model.config] = fn
    if all_keys:
        keep = {name: jnp.ones((B,), bool) for name in CONDITIONS} | (keep or {})
    if features is None:
        features = encode(model, params, x["reference"], x["motion"])
    x = {k: v for k, v in x.items() if k != "audio_frames"}
    return np.asarray(_FORWARD[model.config](params, x, keep, features))


def subset(params, model: EMOModel):
    """The leaves of `params` that `model` has."""
    flat = flatten_dict(params)
    return unflatten_dict({p: flat[p] for p in flatten_dict(abstract_params(model))})


def per_frame_change(a, b):
    return np.abs(a - b).reshape(F, -1).max(axis=1)


def test_shapes_and_components(trained):
    out = run(EMOModel(CFG), trained, inputs())
    assert out.shape == (B, F, S, S, 4) and out.dtype == np.float32 and np.isfinite(out).all()
    counts = emo_counts(trained)
    assert set(counts) == set(COMPONENTS)
    # ReferenceNet = backbone without its output head and cross-attention (norm2 included)
    assert counts["reference_unet"] < counts["denoising_unet"]


@pytest.mark.parametrize("layer", ["use_audio", "use_temporal", "use_speed", "use_face_locator"])
def test_new_layers_start_as_identity(fresh, trained, layer):
    """A layer added fresh to a trained model (every weight around it non-zero, the temporal
    modules' `proj_out` included) leaves the output as it was."""
    x = inputs()
    off = variant(**{layer: False})
    kept = flatten_dict(subset(trained, off))
    added = unflatten_dict({p: kept.get(p, v) for p, v in flatten_dict(fresh).items()})
    assert len(flatten_dict(added)) > len(kept)
    without = run(off, unflatten_dict(kept), x)
    np.testing.assert_array_equal(run(EMOModel(CFG), added, x), without)


def test_reference_changes_every_frame(trained):
    x = inputs()
    y = dict(x, reference=x["reference"] + 0.5)
    change = per_frame_change(run(EMOModel(CFG), trained, x), run(EMOModel(CFG), trained, y))
    assert (change > 1e-3).all(), change


def test_audio_acts_only_within_its_window(trained):
    model = variant(use_temporal=False)
    params = subset(trained, model)
    x = inputs()
    base = run(model, params, x)
    m = CFG.audio.window
    i = 3
    frames = x["audio_frames"].copy()
    frames[i] += 1.0
    y = dict(x, audio=window_frames(frames, m)[None])
    change = per_frame_change(base, run(model, params, y))
    inside = np.abs(np.arange(F) - i) <= m
    assert (change[inside] > 1e-4).all(), change
    assert (change[~inside] == 0).all(), change


def test_motion_frames_act_only_through_temporal_modules(trained):
    model = EMOModel(CFG)
    x = inputs()
    y = dict(x, motion=x["motion"] + 1.0)
    assert (per_frame_change(run(model, trained, x), run(model, trained, y)) > 1e-4).all()
    # temporal modules silenced (output projections zero): the motion frames no longer matter
    flat = flatten_dict(trained)
    silenced = unflatten_dict(
        {
            p: jnp.zeros_like(v)
            if any(s.startswith("motion_modules_") for s in p) and "proj_out" in p
            else v
            for p, v in flat.items()
        }
    )
    np.testing.assert_array_equal(run(model, silenced, x), run(model, silenced, y))


def test_dropped_reference_equals_no_reference(trained):
    model = EMOModel(CFG)
    x = inputs()
    features = encode(model, trained, x["reference"], x["motion"])
    dropped = run(model, trained, x, keep={"reference": jnp.array([False])}, features=features)
    absent = run(model, trained, x, features={"reference": {}, "motion": features["motion"]})
    np.testing.assert_allclose(dropped, absent, atol=1e-5)
    kept = run(model, trained, x, features=features)  # every condition's keep True
    no_keep = run(model, trained, x, features=features, all_keys=False)
    np.testing.assert_allclose(kept, no_keep, atol=1e-6)
    assert np.abs(kept - dropped).max() > 1e-3


def test_dropped_audio_speed_motion_use_null_forms(trained):
    model = EMOModel(CFG)
    x = inputs()
    no = jnp.array([False])
    silent = dict(x, audio=np.zeros_like(x["audio"]))
    for name, changed in (("audio", silent), ("speed", dict(x, speed=x["speed"] + 1.0))):
        # a dropped condition ignores its input
        np.testing.assert_array_equal(
            run(model, trained, x, keep={name: no}), run(model, trained, changed, keep={name: no})
        )
    first_clip = run(model, trained, x, keep={"motion": no})
    zero_maps = encode(model, trained, x["reference"], None)
    zero_maps = jax.tree_util.tree_map(
        lambda a: a[: B * N] if a.shape[0] == B * CFG.emo.n_motion_frames else a, zero_maps
    )
    np.testing.assert_allclose(first_clip, run(model, trained, x, features=zero_maps), atol=1e-5)


def test_remat_and_bfloat16_match_float32(trained):
    x = inputs()
    plain = run(EMOModel(CFG), trained, x)
    remat = run(variant(remat=True), trained, x)
    np.testing.assert_allclose(remat, plain, atol=1e-5)
    bf16 = run(EMOModel(dataclasses.replace(CFG, dtype="bfloat16")), trained, x)
    assert np.abs(bf16 - plain).max() <= 0.05 * np.abs(plain).max()


def test_temporal_module_matches_diffusers():
    torch.manual_seed(0)
    ref = AnimateDiffTransformer3D(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=16,
        norm_num_groups=4,
        double_self_attention=True,
        positional_embeddings="sinusoidal",
        num_positional_embeddings=24,
    ).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.1 * torch.randn_like(p))
    sd = {k: v.numpy() for k, v in ref.state_dict().items() if not k.endswith("pos_embed.pe")}
    module = TemporalTransformer(2, norm_num_groups=4, max_positions=24)
    frames = 6
    x = np.random.default_rng(0).standard_normal((2 * frames, 5, 3, 16), np.float32)
    conditions = Conditions(frames)
    abstract = jax.eval_shape(lambda: module.init(jax.random.key(0), x, conditions))["params"]
    params, _, _ = torch_to_flax(sd, abstract)
    ours = module.apply({"params": params}, x, conditions)
    with torch.no_grad():
        theirs = ref(torch.from_numpy(np.moveaxis(x, -1, 1).copy()), num_frames=frames)
    theirs = np.moveaxis(theirs.numpy(), 1, -1)
    assert np.abs(ours - theirs).max() <= 1e-4 * np.abs(theirs).max()


def test_loads_sd15_unet_and_motion_adapter(fresh, tmp_path):
    unet_kw = {k: v for k, v in to_dict(CFG.unet).items()}
    torch.manual_seed(0)
    TorchUNet(**unet_kw).save_pretrained(tmp_path / "sd" / "unet")
    temporal = CFG.emo.temporal
    MotionAdapter(
        block_out_channels=CFG.unet.block_out_channels,
        motion_layers_per_block=CFG.unet.layers_per_block,
        motion_num_attention_heads=temporal.motion_num_attention_heads,
        motion_norm_num_groups=temporal.motion_norm_num_groups,
        motion_max_seq_length=temporal.motion_max_seq_length,
    ).save_pretrained(tmp_path / "adapter")

    params, reports = init_from_pretrained(
        fresh, sd15_unet=tmp_path / "sd", motion_adapter=tmp_path / "adapter"
    )
    sd = TorchUNet.from_pretrained(tmp_path / "sd" / "unet").state_dict()
    conv_in = sd["conv_in.weight"].numpy().transpose(2, 3, 1, 0)
    np.testing.assert_array_equal(params["reference_unet"]["conv_in"]["kernel"], conv_in)
    np.testing.assert_array_equal(params["denoising_unet"]["conv_in"]["kernel"], conv_in)
    adapter = MotionAdapter.from_pretrained(tmp_path / "adapter").state_dict()
    key = "up_blocks.1.motion_modules.0.proj_out.weight"
    np.testing.assert_array_equal(
        params["denoising_unet"]["up_blocks_1"]["motion_modules_0"]["proj_out"]["kernel"],
        adapter[key].numpy().T,
    )
    # the audio-attention is new: not SD's text cross-attention, still zero at its output
    attn2 = params["denoising_unet"]["up_blocks_1"]["attentions_0"]["transformer_blocks_0"]["attn2"]
    assert not np.any(np.asarray(attn2["to_out_0"]["kernel"]))
    text = [r for r in reports if r.component == "reference_unet"][0]
    assert any("attn2" in k for k in text.unused) and any(
        k.startswith("conv_out") for k in text.unused
    )
    summary = "\n".join(r.summary() for r in reports)
    assert "denoising_unet" in summary and "kept at init" in summary

    # a foreign key is an error that names it
    from safetensors.numpy import load_file, save_file

    f = tmp_path / "adapter" / "diffusion_pytorch_model.safetensors"
    bad = dict(
        load_file(f), **{"down_blocks.0.motion_modules.0.extra.weight": np.zeros(2, np.float32)}
    )
    save_file(bad, f)
    with pytest.raises(ConversionError, match="motion_modules.0.extra.weight"):
        init_from_pretrained(fresh, motion_adapter=tmp_path / "adapter")
