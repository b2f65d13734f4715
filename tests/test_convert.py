"""Weight conversion: original layouts against diffusers' converters, `emo-jax convert`, bit-exact
round trips of the whole EMO model, the PyTorch twin, and bad input."""

import argparse
import json
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL as TorchVAE
from diffusers import MotionAdapter
from diffusers import UNet2DConditionModel as TorchUNet
from diffusers.loaders.single_file_utils import (
    convert_animatediff_checkpoint_to_diffusers,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
)
from flax.traverse_util import flatten_dict
from safetensors.numpy import load_file, save_file

from emo_jax.audio.features import window_frames
from emo_jax.checkpoint.bundle import load_bundle, save_bundle
from emo_jax.cli import main
from emo_jax.config import load_config, to_dict
from emo_jax.interop import layouts
from emo_jax.interop.export import PARTS, export_model, import_model
from emo_jax.models.emo import EMOModel, abstract_params, encode_reference, init_params
from emo_jax.models.inventory import COMPONENTS, component_of
from emo_jax.models.vae import VAE_FORMAT
from emo_jax.weights.pretrained import init_params as init_folder_params

CFG = load_config("configs/model/tiny.yaml")
TINY = "configs/model/tiny.yaml"


def tiny_torch_unet(seed=0):
    torch.manual_seed(seed)
    return TorchUNet(**to_dict(CFG.model.unet)).eval()


def tiny_torch_vae(seed=0):
    torch.manual_seed(seed)
    return TorchVAE(**to_dict(CFG.model.vae)).eval()


def tiny_adapter(seed=0, heads=None, groups=None):
    t = CFG.model.emo.temporal
    torch.manual_seed(seed)
    adapter = MotionAdapter(
        block_out_channels=CFG.model.unet.block_out_channels,
        motion_layers_per_block=CFG.model.unet.layers_per_block,
        motion_num_attention_heads=heads or t.motion_num_attention_heads,
        motion_norm_num_groups=groups or t.motion_norm_num_groups,
        motion_max_seq_length=t.motion_max_seq_length,
    )
    with torch.no_grad():
        for p in adapter.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return adapter


def numpy_sd(module):
    return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


def ldm_single_file(path):
    """A tiny SD checkpoint in the original layout, plus a text-encoder tensor to leave out."""
    unet, vae = numpy_sd(tiny_torch_unet()), numpy_sd(tiny_torch_vae())
    sd = layouts.to_original(unet, layouts.unet_table(unet, CFG.model.unet))
    sd.update(layouts.to_original(vae, layouts.vae_table(vae, CFG.model.vae)))
    sd["cond_stage_model.transformer.text_model.final_layer_norm.weight"] = np.ones(8, np.float32)
    save_file(sd, str(path))
    return unet, vae, sd


def animatediff_original(adapter):
    sd = numpy_sd(adapter)
    out = {}
    for k, v in sd.items():
        if k.endswith("pos_embed.pe"):
            base = k[: -len("pos_embed.pe")]
            for i in (0, 1):
                out[layouts.animatediff_to_original(base + f"attn{i + 1}.pos_encoder.pe")] = v
        else:
            out[layouts.animatediff_to_original(k)] = v
    return out


def test_sd_single_file_layout_agrees_with_diffusers(tmp_path):
    unet, vae, sd = ldm_single_file(tmp_path / "sd.safetensors")
    ours_unet = layouts.to_original(unet, layouts.unet_table(unet, CFG.model.unet))
    theirs = convert_ldm_unet_checkpoint(
        {k: torch.from_numpy(v) for k, v in ours_unet.items()}, dict(tiny_torch_unet().config)
    )
    assert theirs.keys() == unet.keys()
    assert all(np.array_equal(theirs[k].numpy(), unet[k]) for k in unet)
    ours_vae = layouts.to_original(vae, layouts.vae_table(vae, CFG.model.vae))
    theirs = convert_ldm_vae_checkpoint(
        {k: torch.from_numpy(v) for k, v in ours_vae.items()}, dict(tiny_torch_vae().config)
    )
    assert theirs.keys() == vae.keys()
    assert all(np.array_equal(theirs[k].numpy(), vae[k]) for k in vae)

    # emo-jax convert reads it into a diffusers pipeline folder that diffusers opens
    assert (
        main(
            [
                "convert",
                "--src",
                str(tmp_path / "sd.safetensors"),
                "--dst",
                str(tmp_path / "sd15"),
                "--dst-format",
                "diffusers",
                "--config",
                TINY,
            ]
        )
        == 0
    )
    loaded = numpy_sd(TorchUNet.from_pretrained(tmp_path / "sd15" / "unet"))
    assert loaded.keys() == unet.keys() and all(np.array_equal(loaded[k], unet[k]) for k in unet)
    loaded = numpy_sd(TorchVAE.from_pretrained(tmp_path / "sd15" / "vae"))
    assert all(np.array_equal(loaded[k], vae[k]) for k in vae)


def test_animatediff_layout_agrees_with_diffusers(tmp_path):
    adapter = tiny_adapter(heads=8, groups=32)  # the original layout stores neither: always these
    original = animatediff_original(adapter)
    ours = layouts.animatediff_from_original(original)
    theirs = convert_animatediff_checkpoint_to_diffusers(
        {k: torch.from_numpy(v) for k, v in original.items()}
    )
    assert ours.keys() == theirs.keys()
    assert all(np.array_equal(ours[k], theirs[k].numpy()) for k in ours)

    torch.save({k: torch.from_numpy(v) for k, v in original.items()}, tmp_path / "mm.ckpt")
    assert (
        main(["convert", "--src", str(tmp_path / "mm.ckpt"), "--dst", str(tmp_path / "orbax")]) == 0
    )
    assert (
        main(["convert", "--src", str(tmp_path / "orbax"), "--dst", str(tmp_path / "adapter")]) == 0
    )
    reloaded = MotionAdapter.from_pretrained(tmp_path / "adapter")
    expected = numpy_sd(adapter)
    for k, v in numpy_sd(reloaded).items():
        if k.endswith("pos_embed.pe"):  # fixed tables, recomputed (equal to float32 rounding)
            np.testing.assert_allclose(v, expected[k], atol=1e-6)
        else:
            assert np.array_equal(v, expected[k]), k
    # its temporal module computes what ours computes
    from emo_jax.interop.formats import read
    from emo_jax.nn.conditions import Conditions
    from emo_jax.nn.temporal import TemporalTransformer

    ours_model = read(tmp_path / "adapter")
    mm = reloaded.up_blocks[1].motion_modules[0]
    x = np.random.default_rng(0).standard_normal((2 * 6, 4, 4, 32), np.float32)
    module = TemporalTransformer(8, norm_num_groups=32, max_positions=16)
    out = module.apply(
        {"params": ours_model.params["up_blocks_1"]["motion_modules_0"]}, x, Conditions(6)
    )
    with torch.no_grad():
        ref = mm(torch.from_numpy(np.moveaxis(x, -1, 1).copy()), num_frames=6).numpy()
    assert np.abs(out - np.moveaxis(ref, 1, -1)).max() <= 1e-4 * np.abs(ref).max()


@pytest.fixture(scope="module")
def bundle_params():
    emo = init_params(EMOModel(CFG.model), seed=0)
    leaves, treedef = jax.tree_util.tree_flatten(emo)
    keys = jax.random.split(jax.random.key(3), len(leaves))
    emo = jax.tree_util.tree_unflatten(
        treedef,
        [
            0.05 * jax.random.normal(k, x.shape) if not np.any(np.asarray(x)) else x
            for k, x in zip(keys, leaves)
        ],
    )
    vae = init_folder_params(
        VAE_FORMAT.build(CFG.model.vae, None), VAE_FORMAT, CFG.model.vae, jax.random.key(0)
    )
    return {"emo": emo, "vae": vae}


def assert_same_tree(a, b):
    fa, fb = flatten_dict(a), flatten_dict(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        x, y = np.asarray(fa[k]), np.asarray(fb[k])
        assert x.dtype == y.dtype and np.array_equal(x, y), k


def test_exported_parts_hold_each_component_once():
    """The export's sub-folders split the one component table: every param of a model with
    every component lands in exactly one part."""
    assert sorted(c for part in PARTS for c in part.components) == sorted(COMPONENTS)
    paths = flatten_dict(abstract_params(EMOModel(CFG.model)))
    assert {component_of(p) for p in paths} == set(COMPONENTS)
    for p in paths:
        assert sum(part.select(p) for part in PARTS) == 1, p


def test_orbax_export_orbax_is_bit_exact(bundle_params, tmp_path):
    save_bundle(tmp_path / "bundle", CFG, bundle_params)
    assert (
        main(["convert", "--src", str(tmp_path / "bundle"), "--dst", str(tmp_path / "export")]) == 0
    )
    index = json.loads((tmp_path / "export" / "emo_index.json").read_text())
    assert set(index["components"]) == {
        "reference_unet",
        "denoising_unet",
        "motion_modules",
        "speed_encoder",
        "audio_proj",
        "face_locator",
        "vae",
    }
    TorchUNet.from_pretrained(
        tmp_path / "export" / "reference_unet"
    )  # each part opens in its library
    MotionAdapter.from_pretrained(tmp_path / "export" / "motion_modules")
    assert (
        main(["convert", "--src", str(tmp_path / "export"), "--dst", str(tmp_path / "back")]) == 0
    )
    config, params = load_bundle(tmp_path / "back")
    assert config == CFG
    assert_same_tree(params, bundle_params)


def test_torch_twin_matches_flax(bundle_params, tmp_path):
    from emo_jax.interop.torch_twin import EMOTwin

    export_model(tmp_path / "export", CFG, bundle_params)
    twin = EMOTwin.from_exported(tmp_path / "export")
    model = EMOModel(CFG.model)
    params = import_model(tmp_path / "export")[1]["emo"]
    rng = np.random.default_rng(0)
    b, f, n, s = 1, 5, 2, 16
    lat = rng.standard_normal((b, f, s, s, 4), np.float32)
    ref = rng.standard_normal((b, s, s, 4), np.float32)
    mot = rng.standard_normal((b, n, s, s, 4), np.float32)
    audio = window_frames(rng.standard_normal((f, 4, 80), np.float32), 2)[None]
    mask = (rng.uniform(size=(b, 8 * s, 8 * s)) > 0.5).astype(np.float32)
    speed = rng.uniform(0, 1.5, (b, f)).astype(np.float32)
    t = np.array([321])
    chw = lambda a: torch.from_numpy(np.ascontiguousarray(np.moveaxis(a, -1, -3)))  # noqa: E731
    forward = jax.jit(
        lambda p, keep: model.apply(
            {"params": p}, lat, t, encode_reference(model, p, ref, mot), audio, mask, speed, keep
        )
    )
    kept = {name: np.array([True]) for name in ("reference", "audio", "speed", "motion")}
    for dropped in (None, "reference", "audio", "speed", "motion"):
        keep = None if dropped is None else {dropped: np.array([False])}
        # every drop through one program: the twin gets only the dropped condition's keep
        ours = np.asarray(forward(params, keep if keep is None else kept | keep))
        theirs = twin(
            chw(lat),
            torch.from_numpy(t),
            chw(ref),
            chw(mot),
            torch.from_numpy(audio),
            torch.from_numpy(mask),
            torch.from_numpy(speed),
            None if keep is None else {dropped: torch.tensor([False])},
        )
        theirs = np.moveaxis(theirs.numpy(), -3, -1)
        # float32: measured 1.3e-6 to 1.6e-6 of the largest output (also of the norm)
        assert np.abs(ours - theirs).max() <= 5e-6 * np.abs(theirs).max(), dropped


def test_start_of_training_bundle_reports_what_was_loaded(tmp_path, capsys):
    ldm_single_file(tmp_path / "sd.safetensors")
    torch.save(
        {k: torch.from_numpy(v) for k, v in animatediff_original(tiny_adapter()).items()},
        tmp_path / "mm.ckpt",
    )
    code = main(
        [
            "convert",
            "--src",
            str(tmp_path / "sd.safetensors"),
            "--motion-adapter",
            str(tmp_path / "mm.ckpt"),
            "--emo-config",
            TINY,
            "--dst",
            str(tmp_path / "start"),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "reference_unet <-" in out and "denoising_unet <-" in out and "kept at init" in out
    config, params = load_bundle(tmp_path / "start")
    unet = numpy_sd(tiny_torch_unet())
    np.testing.assert_array_equal(
        params["emo"]["reference_unet"]["conv_in"]["kernel"],
        unet["conv_in.weight"].transpose(2, 3, 1, 0),
    )


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys):
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    (tmp_path / "notes.txt").write_text("hello")
    save_file({"some.weight": np.zeros(3, np.float32)}, str(tmp_path / "other.safetensors"))
    torch.save(
        {"w": torch.zeros(2), "args": argparse.Namespace(lr=1.0)},
        tmp_path / "unsafe.ckpt",
    )
    ldm_single_file(tmp_path / "sd.safetensors")
    sd = load_file(str(tmp_path / "sd.safetensors"))
    (tmp_path / "cut.safetensors").write_bytes((tmp_path / "sd.safetensors").read_bytes()[:5000])
    (tmp_path / "exists").mkdir()
    cases = [
        (["--src", str(tmp_path / "missing.safetensors")], "not found"),
        (["--src", str(tmp_path / "junk.safetensors")], "not a readable safetensors"),
        (["--src", str(tmp_path / "cut.safetensors")], "not a readable safetensors"),
        (["--src", str(tmp_path / "notes.txt")], "unknown weight file type"),
        (["--src", str(tmp_path / "other.safetensors")], "unknown layout"),
        (["--src", str(tmp_path / "unsafe.ckpt")], "weights_only"),
        (
            ["--src", str(tmp_path / "sd.safetensors"), "--dst-format", "export", "--config", TINY],
            "is written as diffusers",
        ),
    ]
    assert len(sd) > 0
    for extra, message in cases:
        dst = tmp_path / "out"
        code = main(["convert", "--dst", str(dst), *extra])
        err = capsys.readouterr().err.strip()
        assert code == 2 and message in err and "\n" not in err, (extra, err)
        assert not dst.exists()
    code = main(
        [
            "convert",
            "--src",
            str(tmp_path / "sd.safetensors"),
            "--dst",
            str(tmp_path / "exists"),
            "--config",
            TINY,
        ]
    )
    assert code == 2 and "--overwrite" in capsys.readouterr().err
    assert list((tmp_path / "exists").iterdir()) == []
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_mismatches_are_one_line_errors_naming_the_key_and_both_values(
    bundle_params, tmp_path, capsys
):
    """A weight or config mismatch in any format: exit 2, one line naming the file, the key and
    both shapes or values, nothing written."""
    unet = tiny_torch_unet()
    unet.save_pretrained(tmp_path / "unet")  # safetensors
    unet.save_pretrained(tmp_path / "unet_bin", safe_serialization=False)  # pickle
    sd = torch.load(tmp_path / "unet_bin" / "diffusion_pytorch_model.bin", weights_only=True)
    sd["conv_in.weight"] = torch.zeros(32, 4, 3, 1)
    torch.save(sd, tmp_path / "unet_bin" / "diffusion_pytorch_model.bin")
    (tmp_path / "groups").mkdir()
    for name in ("config.json", "diffusion_pytorch_model.safetensors"):
        (tmp_path / "groups" / name).write_bytes((tmp_path / "unet" / name).read_bytes())
    config = json.loads((tmp_path / "unet" / "config.json").read_text())
    (tmp_path / "groups" / "config.json").write_text(json.dumps({**config, "norm_num_groups": 6}))
    # AnimateDiff files store neither groups nor heads; 40 channels do not split into 32 groups
    torch.manual_seed(0)
    wide = MotionAdapter(
        block_out_channels=(40, 80),
        motion_layers_per_block=1,
        motion_num_attention_heads=8,
        motion_norm_num_groups=8,
        motion_max_seq_length=16,
    )
    original = {k: torch.from_numpy(v) for k, v in animatediff_original(wide).items()}
    torch.save(original, tmp_path / "mm.ckpt")
    narrow = tmp_path / "narrow.yaml"  # a model whose audio-attention reads 16-wide tokens
    narrow.write_text(
        f"base: {Path(TINY).absolute()}\nmodel:\n  unet:\n    cross_attention_dim: 16\n"
    )
    ldm_single_file(tmp_path / "sd.safetensors")
    assert main(["convert", "--src", str(tmp_path / "unet"), "--dst", str(tmp_path / "orbax")]) == 0
    (tmp_path / "orbax" / "config.json").write_text(
        json.dumps({**config, "_class_name": "UNet2DConditionModel", "cross_attention_dim": 16})
    )
    save_bundle(tmp_path / "bundle", load_config(str(narrow)), bundle_params)
    to_k = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    to_k_flax = "down_blocks_0/attentions_0/transformer_blocks_0/attn2/to_k/kernel"
    cases = [  # (source, extra arguments, what the line must name)
        (
            tmp_path / "mm.ckpt",
            [],
            ["down_blocks.0.motion_modules.0.temporal_transformer.norm.weight", "40", "32"],
        ),
        (
            tmp_path / "groups",
            [],
            ["config.json", "block_out_channels [32, 64]", "norm_num_groups 6"],
        ),
        (
            tmp_path / "unet_bin",
            [],
            ["diffusion_pytorch_model.bin", "conv_in.weight (32, 4, 3, 1)", "(32, 4, 3, 3)"],
        ),
        (tmp_path / "sd.safetensors", ["--config", str(narrow)], [to_k, "(32, 32)", "(32, 16)"]),
        (tmp_path / "orbax", [], ["params", to_k_flax, "(32, 32)", "(16, 32)"]),
        (
            tmp_path / "bundle",
            [],
            ["params", f"emo/denoising_unet/{to_k_flax}", "(32, 32)", "(16, 32)"],
        ),
    ]
    for src, extra, names in cases:
        dst = tmp_path / "out"
        code = main(["convert", "--src", str(src), "--dst", str(dst), *extra])
        err = capsys.readouterr().err.strip()
        assert code == 2 and "\n" not in err and str(src) in err, (src, err)
        assert all(n in err for n in names), (src, err)
        assert not dst.exists()
