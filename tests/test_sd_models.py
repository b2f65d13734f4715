"""SD1.5 UNet and VAE: output parity with diffusers, exact round trips, exact full-size counts."""

import jax
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL as TorchVAE
from diffusers import UNet2DConditionModel as TorchUNet

from emo_jax.config import UNetConfig, VAEConfig
from emo_jax.errors import InputError
from emo_jax.models.inventory import count
from emo_jax.models.unet import UNET_FORMAT, UNet2DConditionModel
from emo_jax.models.vae import VAE_FORMAT, AutoencoderKL
from emo_jax.weights.convert import ConversionError, flax_to_torch, torch_to_flax
from emo_jax.weights.pretrained import abstract_params

UNET_CONFIGS = {
    # per-block head counts as a tuple, two layers per block, conv projections
    "tuple_heads": dict(
        sample_size=16,
        block_out_channels=(32, 64),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=24,
        attention_head_dim=(2, 4),
        norm_num_groups=8,
    ),
    # linear projections, two transformer layers, scale-shift resnets, 3 levels, odd latent size
    "linear_proj": dict(
        sample_size=12,
        in_channels=5,
        out_channels=3,
        block_out_channels=(16, 32, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16,
        attention_head_dim=4,
        transformer_layers_per_block=2,
        use_linear_projection=True,
        resnet_time_scale_shift="scale_shift",
        norm_num_groups=4,
        flip_sin_to_cos=False,
        freq_shift=1,
    ),
}


def torch_model(cls, seed: int, **kw):
    torch.manual_seed(seed)
    model = cls(**kw).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))  # no exact zeros or ones anywhere
    return model


def assert_close(ours, ref):
    ours, ref = np.asarray(ours), np.asarray(ref)
    assert ours.shape == ref.shape
    err = np.abs(ours - ref).max()
    assert err <= 1e-4 * np.abs(ref).max(), (err, np.abs(ref).max())


nchw = lambda a: torch.from_numpy(np.ascontiguousarray(np.moveaxis(a, -1, 1)))  # noqa: E731
nhwc = lambda t: np.moveaxis(t.detach().numpy(), 1, -1)  # noqa: E731


@pytest.mark.parametrize("name", sorted(UNET_CONFIGS))
def test_unet_matches_diffusers(name, tmp_path):
    kw = UNET_CONFIGS[name]
    ref_model = torch_model(TorchUNet, 0, **kw)
    ref_model.save_pretrained(tmp_path / "unet")
    model, params = UNet2DConditionModel.from_pretrained(tmp_path / "unet")

    rng = np.random.default_rng(1)
    size = kw["sample_size"]
    x = rng.standard_normal((2, size, size, kw.get("in_channels", 4)), dtype=np.float32)
    ctx = rng.standard_normal((2, 7, kw["cross_attention_dim"]), dtype=np.float32)
    t = np.array([3, 781])
    ours = jax.jit(model.apply)({"params": params}, x, t, ctx)
    with torch.no_grad():
        ref = ref_model(nchw(x), torch.from_numpy(t), torch.from_numpy(ctx)).sample
    assert_close(ours, nhwc(ref))


def test_vae_matches_diffusers(tmp_path):
    kw = dict(
        block_out_channels=(16, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        norm_num_groups=8,
        latent_channels=4,
        layers_per_block=2,
        scaling_factor=0.5,
    )
    ref_model = torch_model(TorchVAE, 0, **kw)
    ref_model.save_pretrained(tmp_path / "vae")
    model, params = AutoencoderKL.from_pretrained(tmp_path / "vae")
    assert model.config.scaling_factor == 0.5

    x = np.random.default_rng(2).uniform(-1, 1, (2, 24, 24, 3)).astype(np.float32)
    mean, logvar = model.apply({"params": params}, x, method=model.encode)
    decoded = model.apply({"params": params}, mean, method=model.decode)
    with torch.no_grad():
        dist = ref_model.encode(nchw(x)).latent_dist
        ref_decoded = ref_model.decode(dist.mean).sample
    assert_close(mean, nhwc(dist.mean))
    assert_close(logvar, nhwc(dist.logvar))
    assert_close(decoded, nhwc(ref_decoded))


def test_round_trips_are_bit_exact(tmp_path):
    ref_model = torch_model(TorchUNet, 3, **UNET_CONFIGS["linear_proj"])
    sd = {k: v.numpy() for k, v in ref_model.state_dict().items()}
    cfg = UNetConfig(**{k: v for k, v in ref_model.config.items() if not k.startswith("_")})
    params, _, _ = torch_to_flax(
        sd, abstract_params(UNET_FORMAT.build(cfg, None), UNET_FORMAT, cfg)
    )
    back = flax_to_torch(params)
    assert back.keys() == sd.keys()
    for k in sd:
        assert back[k].dtype == sd[k].dtype and np.array_equal(back[k], sd[k]), k

    # ours -> diffusers folder -> diffusers loads it -> identical tensors
    UNet2DConditionModel.save_pretrained(params, cfg, tmp_path / "out")
    reloaded = TorchUNet.from_pretrained(tmp_path / "out")
    for k, v in reloaded.state_dict().items():
        assert np.array_equal(v.numpy(), sd[k]), k
    assert (
        reloaded.config.use_linear_projection and reloaded.config.transformer_layers_per_block == 2
    )


def test_full_size_counts_equal_pytorch():
    unet_cfg, vae_cfg = UNetConfig(), VAEConfig()
    ours_unet = count(abstract_params(UNET_FORMAT.build(unet_cfg, None), UNET_FORMAT, unet_cfg))
    ours_vae = count(abstract_params(VAE_FORMAT.build(vae_cfg, None), VAE_FORMAT, vae_cfg))
    assert ours_unet == 859_520_964
    assert ours_vae == 83_653_863
    with torch.device("meta"):
        ref_unet = TorchUNet(cross_attention_dim=768, sample_size=64)
    assert ours_unet == sum(p.numel() for p in ref_unet.parameters())


def test_converter_names_every_offending_key():
    ref_model = torch_model(TorchVAE, 0, block_out_channels=(8,), norm_num_groups=4)
    sd = {k: v.numpy() for k, v in ref_model.state_dict().items()}
    cfg = VAEConfig(
        block_out_channels=(8,),
        norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
    )
    abstract = abstract_params(VAE_FORMAT.build(cfg, None), VAE_FORMAT, cfg)
    del sd["encoder.conv_in.bias"]
    sd["encoder.extra.weight"] = np.zeros(3, np.float32)
    sd["decoder.conv_out.weight"] = np.zeros((3, 8, 5, 5), np.float32)
    with pytest.raises(ConversionError) as e:
        torch_to_flax(sd, abstract, source="bad.safetensors")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("bad.safetensors:")
    for key in ("encoder.conv_in.bias", "encoder.extra.weight", "decoder.conv_out.weight"):
        assert key in msg


def test_bad_folders_give_one_line_errors(tmp_path):
    with pytest.raises(InputError, match="model folder not found"):
        UNet2DConditionModel.from_pretrained(tmp_path / "nope")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(
        '{"_class_name": "UNet2DConditionModel", "down_block_types": ["KDownBlock2D"], "up_block_types": ["UpBlock2D"], "block_out_channels": [32]}'
    )
    with pytest.raises(InputError, match="not supported"):
        UNet2DConditionModel.from_pretrained(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text(
        '{"block_out_channels": [32], "down_block_types": ["DownBlock2D"], "up_block_types": ["UpBlock2D"]}'
    )
    with pytest.raises(InputError, match="no weight file"):
        UNet2DConditionModel.from_pretrained(tmp_path / "m")
    (tmp_path / "m" / "diffusion_pytorch_model.safetensors").write_bytes(b"garbage")
    with pytest.raises(InputError, match="not a readable safetensors"):
        UNet2DConditionModel.from_pretrained(tmp_path / "m")
