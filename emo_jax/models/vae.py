"""AutoencoderKL (the Stable Diffusion VAE), channels-last, with diffusers' module names."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from emo_jax.config import VAEConfig
from emo_jax.nn.activations import get_activation
from emo_jax.nn.attention import Attention
from emo_jax.nn.resnet import Downsample2D, ResnetBlock2D, Upsample2D, conv, group_norm
from emo_jax.weights import pretrained

EPS = 1e-6


class VAEBlock(nn.Module):
    """DownEncoderBlock2D / UpDecoderBlock2D: resnets without time embedding, then resampling."""

    kind: str  # "down" | "up"
    out_channels: int
    num_layers: int
    resample: bool
    groups: int
    act_fn: str
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i in range(self.num_layers):
            x = ResnetBlock2D(
                self.out_channels,
                self.groups,
                EPS,
                self.act_fn,
                dtype=self.dtype,
                name=f"resnets_{i}",
            )(x)
        if self.resample and self.kind == "down":
            x = Downsample2D(self.out_channels, 0, self.dtype, name="downsamplers_0")(x)
        if self.resample and self.kind == "up":
            x = Upsample2D(self.out_channels, self.dtype, name="upsamplers_0")(x)
        return x


class VAEMidBlock(nn.Module):
    """UNetMidBlock2D of the VAE: resnet, single-head attention with residual, resnet."""

    channels: int
    groups: int
    act_fn: str
    add_attention: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        res = lambda i: ResnetBlock2D(  # noqa: E731
            self.channels, self.groups, EPS, self.act_fn, dtype=self.dtype, name=f"resnets_{i}"
        )
        x = res(0)(x)
        if self.add_attention:
            x = Attention(
                1,
                self.channels,
                bias=True,
                norm_num_groups=self.groups,
                norm_eps=EPS,
                residual_connection=True,
                dtype=self.dtype,
                name="attentions_0",
            )(x)
        return res(1)(x)


class Coder(nn.Module):
    """The encoder (image (B, H, W, 3) -> moments (B, H/f, W/f, 2*latent)) or the decoder
    (latents (B, h, w, latent) -> image (B, h*f, w*f, 3)): mirror images of each other."""

    config: VAEConfig
    kind: str  # "encoder" | "decoder"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        encoder = self.kind == "encoder"
        ch = cfg.block_out_channels if encoder else tuple(reversed(cfg.block_out_channels))
        mid = VAEMidBlock(
            ch[-1] if encoder else ch[0],
            cfg.norm_num_groups,
            cfg.act_fn,
            cfg.mid_block_add_attention,
            self.dtype,
            name="mid_block",
        )
        x = conv(ch[0], 3, self.dtype, "conv_in")(x)
        if not encoder:
            x = mid(x)
        for i, c in enumerate(ch):
            x = VAEBlock(
                "down" if encoder else "up",
                c,
                cfg.layers_per_block + (0 if encoder else 1),
                i < len(ch) - 1,
                cfg.norm_num_groups,
                cfg.act_fn,
                self.dtype,
                name=f"{'down' if encoder else 'up'}_blocks_{i}",
            )(x)
        if encoder:
            x = mid(x)
        x = get_activation(cfg.act_fn)(
            group_norm(cfg.norm_num_groups, EPS, self.dtype, "conv_norm_out")(x)
        )
        out = 2 * cfg.latent_channels if encoder else cfg.out_channels
        return conv(out, 3, self.dtype, "conv_out")(x)


class AutoencoderKL(nn.Module):
    """The KL autoencoder: `encode` -> (mean, logvar) of the latent, `decode` latents -> image.

    Images are in [-1, 1]; latents are unscaled (multiply by `config.scaling_factor` for the
    diffusion model, as diffusers pipelines do; see `scale_latents`).
    """

    config: VAEConfig
    dtype: Any = jnp.float32

    def setup(self) -> None:
        cfg = self.config
        self.encoder = Coder(cfg, "encoder", self.dtype)
        self.decoder = Coder(cfg, "decoder", self.dtype)
        if cfg.use_quant_conv:
            self.quant_conv = nn.Conv(2 * cfg.latent_channels, (1, 1), dtype=self.dtype)
        if cfg.use_post_quant_conv:
            self.post_quant_conv = nn.Conv(cfg.latent_channels, (1, 1), dtype=self.dtype)

    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(B, H, W, 3) -> mean, logvar (B, H/f, W/f, latent); logvar clipped to [-30, 20]."""
        moments = self.encoder(x)
        if self.config.use_quant_conv:
            moments = self.quant_conv(moments)
        mean, logvar = jnp.split(moments, 2, axis=-1)
        return mean, jnp.clip(logvar, -30.0, 20.0)

    def decode(self, z: jax.Array) -> jax.Array:
        """(B, h, w, latent) -> (B, h*f, w*f, 3)."""
        if self.config.use_post_quant_conv:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def __call__(self, x: jax.Array, rng: jax.Array | None = None) -> jax.Array:
        mean, logvar = self.encode(x)
        z = mean if rng is None else sample_latent(mean, logvar, rng)
        return self.decode(z)

    @classmethod
    def from_pretrained(cls, folder, dtype: Any = None) -> tuple[AutoencoderKL, Any]:
        """(module, params) from a diffusers `AutoencoderKL` folder."""
        return pretrained.from_pretrained(folder, VAE_FORMAT, dtype)

    @staticmethod
    def save_pretrained(params: Any, config: VAEConfig, folder) -> None:
        """Writes a diffusers `AutoencoderKL` folder."""
        pretrained.save_pretrained(params, config, folder, VAE_FORMAT)


def sample_latent(mean: jax.Array, logvar: jax.Array, rng: jax.Array) -> jax.Array:
    """A draw from the diagonal Gaussian N(mean, exp(logvar))."""
    return mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape, mean.dtype)


def scale_latents(z: jax.Array, config: VAEConfig) -> jax.Array:
    """VAE latent -> diffusion latent: (z - shift) * scaling_factor."""
    return (z - (config.shift_factor or 0.0)) * config.scaling_factor


def unscale_latents(z: jax.Array, config: VAEConfig) -> jax.Array:
    """Diffusion latent -> VAE latent (inverse of `scale_latents`)."""
    return z / config.scaling_factor + (config.shift_factor or 0.0)


def encode_images(
    vae: AutoencoderKL, params: Any, images: jax.Array, key: jax.Array | None = None
) -> jax.Array:
    """uint8 RGB (N, S, S, 3) -> diffusion latents (N, S/f, S/f, C) in float32: a posterior draw
    with `key`, else its mean."""
    x = images.astype(vae.dtype) / 127.5 - 1.0  # [-1, 1]
    mean, logvar = vae.apply({"params": params}, x, method=AutoencoderKL.encode)
    z = mean if key is None else sample_latent(mean, logvar, key)
    return scale_latents(z.astype(jnp.float32), vae.config)


def decode_images(vae: AutoencoderKL, params: Any, latents: jax.Array) -> jax.Array:
    """Diffusion latents (N, h, w, C) -> uint8 RGB (N, h*f, w*f, 3)."""
    z = unscale_latents(latents, vae.config).astype(vae.dtype)
    x = vae.apply({"params": params}, z, method=AutoencoderKL.decode).astype(jnp.float32)
    return jnp.round((jnp.clip(x, -1.0, 1.0) + 1.0) * 127.5).astype(jnp.uint8)


def validate(cfg: VAEConfig) -> None:
    """Raises ValueError for block types emo_jax does not implement, or norm groups that do
    not divide the widths."""
    bad = [t for t in cfg.down_block_types if t != "DownEncoderBlock2D"]
    bad += [t for t in cfg.up_block_types if t != "UpDecoderBlock2D"]
    if bad:
        raise ValueError(f"VAE block types not supported by emo_jax: {', '.join(bad)}")
    pretrained.check_divides(cfg, "norm_num_groups")


VAE_FORMAT = pretrained.FolderFormat(
    class_name="AutoencoderKL",
    config_cls=VAEConfig,
    build=lambda cfg, dtype: AutoencoderKL(cfg, dtype=dtype or jnp.float32),
    dummy_inputs=lambda cfg: (jnp.zeros((1, cfg.factor, cfg.factor, cfg.in_channels)),),
    weight_stem="diffusion_pytorch_model",
    validate=validate,
)
