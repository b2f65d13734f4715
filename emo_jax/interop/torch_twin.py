"""A PyTorch twin of `EMOModel` that runs an exported folder (emo_jax.interop.export).

Built from diffusers modules where they exist: the ReferenceNet and the backbone are diffusers
`UNet2DConditionModel`s (reference-attention is an attention processor on the backbone's
`attn1`; the audio-attention is its ordinary `attn2`); the temporal modules are diffusers'
`MotionAdapter` modules, run after each spatial layer with the motion frames prepended; the
speed layer, speed encoder, face locator and audio projection are small modules of its own.
Needs the `torch` extra (`pip install 'emo-jax[torch]'`).

    twin = EMOTwin.from_exported("exported/")
    noise = twin(latents, t, reference, motion, audio, face_mask, speed, keep)  # channels-first
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import MotionAdapter, UNet2DConditionModel
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.attention_processor import Attention
from torch import nn

from emo_jax.config import Config, from_dict
from emo_jax.files import read_json
from emo_jax.interop.export import INDEX
from emo_jax.models.audio_proj import window_shape


def sinusoidal(length: int, dim: int) -> torch.Tensor:
    """(length, dim) table of diffusers' SinusoidalPositionalEmbedding."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(length, dim)
    pe[:, 0::2] = torch.sin(position * div)
    pe[:, 1::2] = torch.cos(position * div)
    return pe


class ReferenceAttnProcessor:
    """attn1 of the backbone: keys/values are the frame's tokens + its ReferenceNet twin's."""

    def __init__(self) -> None:
        self.reference: torch.Tensor | None = None  # (B, S, C)
        self.keep: torch.Tensor | None = None  # (B,) bool
        self.num_frames = 1

    def __call__(
        self,
        attn: Attention,
        hidden_states,
        encoder_hidden_states=None,
        attention_mask=None,
        temb=None,
        **kw,
    ):
        x = hidden_states  # (B*F, T, C)
        ctx, mask = x, None
        if self.reference is not None:
            ref = self.reference.repeat_interleave(self.num_frames, 0)  # (B*F, S, C)
            ctx = torch.cat([x, ref], 1)
            if self.keep is not None:
                keep = self.keep.repeat_interleave(self.num_frames)[:, None].expand(
                    -1, ref.shape[1]
                )
                mask = torch.cat([torch.ones(x.shape[:2], dtype=torch.bool), keep], 1)[
                    :, None, None
                ]
        heads = attn.heads
        split = lambda t: t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)  # noqa: E731
        out = F.scaled_dot_product_attention(
            split(attn.to_q(x)), split(attn.to_k(ctx)), split(attn.to_v(ctx)), attn_mask=mask
        )
        out = out.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1)
        return attn.to_out[0](out)


class SpeedLayer(nn.Module):
    """`speed_norm` + `speed_attn` of one temporal module."""

    def __init__(self, channels: int, heads: int, speed_dim: int):
        super().__init__()
        self.speed_norm = nn.LayerNorm(channels)
        self.speed_attn = Attention(
            channels, cross_attention_dim=speed_dim, heads=heads, dim_head=channels // heads
        )


class SpeedEncoder(nn.Module):
    """Bucket encoding, +-m frame window, `linear_1` - SiLU - `linear_2`."""

    def __init__(self, centers, radii, window: int, hidden: int, embed: int):
        super().__init__()
        self.register_buffer("centers", torch.tensor(centers, dtype=torch.float32))
        self.register_buffer("radii", torch.tensor(radii, dtype=torch.float32))
        self.window = window
        self.linear_1 = nn.Linear((2 * window + 1) * len(centers), hidden)
        self.linear_2 = nn.Linear(hidden, embed)

    def forward(self, speed: torch.Tensor) -> torch.Tensor:
        s = torch.tanh((speed[..., None] - self.centers) / self.radii * 3.0)  # (B, F, d)
        f = s.shape[1]
        idx = (torch.arange(f)[:, None] + torch.arange(-self.window, self.window + 1)).clamp(
            0, f - 1
        )
        s = s[:, idx].reshape(s.shape[0], f, -1)  # (B, F, (2m+1)d)
        return self.linear_2(F.silu(self.linear_1(s)))


class AudioProjModel(nn.Module):
    """Hallo's audio projection: flattened window -> 3-layer MLP -> K tokens -> LayerNorm."""

    def __init__(self, in_dim: int, hidden_dim: int, num_tokens: int, output_dim: int):
        super().__init__()
        self.num_tokens, self.output_dim = num_tokens, output_dim
        self.proj1 = nn.Linear(in_dim, hidden_dim)
        self.proj2 = nn.Linear(hidden_dim, hidden_dim)
        self.proj3 = nn.Linear(hidden_dim, num_tokens * output_dim)
        self.norm = nn.LayerNorm(output_dim)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        b, f = audio.shape[:2]
        x = torch.relu(self.proj2(torch.relu(self.proj1(audio.reshape(b * f, -1)))))
        x = self.proj3(x).reshape(b * f, self.num_tokens, self.output_dim)
        return self.norm(x).reshape(b, f, self.num_tokens, self.output_dim)


class FaceLocator(nn.Module):
    """`conv_in`, 3x3 / stride-2 3x3 conv pairs (`blocks`), zero-initialised `conv_out`."""

    def __init__(self, out_channels: int, channels):
        super().__init__()
        self.conv_in = nn.Conv2d(1, channels[0], 3, padding=1)
        blocks = []
        for i in range(len(channels) - 1):
            blocks.append(nn.Conv2d(channels[i], channels[i], 3, padding=1))
            blocks.append(nn.Conv2d(channels[i], channels[i + 1], 3, padding=1, stride=2))
        self.blocks = nn.ModuleList(blocks)
        self.conv_out = nn.Conv2d(channels[-1], out_channels, 3, padding=1)

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        x = F.silu(self.conv_in(mask[:, None]))
        for block in self.blocks:
            x = F.silu(block(x))
        return self.conv_out(x)


def _layers(unet: UNet2DConditionModel):
    """(block name, layer index, module whose output feeds temporal module i) per position."""
    for name, blocks in (("down_blocks", unet.down_blocks), ("up_blocks", unet.up_blocks)):
        for b, block in enumerate(blocks):
            mods = block.attentions if getattr(block, "attentions", None) else block.resnets
            for i, mod in enumerate(mods):
                yield f"{name}.{b}", i, mod
    mid = unet.mid_block
    yield "mid_block", 0, mid.attentions[0] if getattr(mid, "attentions", None) else mid.resnets[0]


class EMOTwin(nn.Module):
    """The EMO denoiser in PyTorch, with the same inputs and outputs as `EMOModel`."""

    def __init__(self, config: Config, folder: Path, components: dict):
        super().__init__()
        cfg, emo = config.model, config.model.emo
        self.config = config
        self.reference_unet = UNet2DConditionModel.from_pretrained(
            folder / components["reference_unet"]
        )
        self.denoising_unet = UNet2DConditionModel.from_pretrained(
            folder / components["denoising_unet"]
        )
        self.use_temporal = "motion_modules" in components
        self.use_speed = "speed_encoder" in components
        self.use_audio = emo.use_audio
        self.motion_adapter = (
            MotionAdapter.from_pretrained(folder / components["motion_modules"])
            if self.use_temporal
            else None
        )
        self.n_motion = emo.n_motion_frames
        self.max_positions = emo.temporal.motion_max_seq_length
        self.processors = {}
        for name in self.denoising_unet.attn_processors:
            if name.endswith("attn1.processor") and "motion" not in name:
                self.processors[name] = ReferenceAttnProcessor()
        self.denoising_unet.set_attn_processor(
            {n: self.processors.get(n, p) for n, p in self.denoising_unet.attn_processors.items()}
        )
        if self.use_speed:
            sub = folder / components["speed_encoder"]
            self.speed_encoder = SpeedEncoder(
                emo.speed_centers,
                emo.speed_radii,
                emo.speed_window,
                emo.speed_hidden_dim,
                emo.speed_embed_dim,
            )
            self.speed_layers = nn.ModuleDict()
            names = {
                f"speed_encoder.{k}": f"speed_encoder.{k}"
                for k in self.speed_encoder.state_dict()
                if k.startswith("linear")
            }
            for block, i, _ in _layers(self.denoising_unet):
                mm = self._motion_module(block, i)
                layer = SpeedLayer(
                    mm.proj_in.in_features,
                    mm.transformer_blocks[0].attn1.heads,
                    emo.speed_embed_dim,
                )
                key = f"{block}_{i}".replace(".", "_")
                self.speed_layers[key] = layer
                names.update(
                    {
                        f"speed_layers.{key}.{k}": f"{block}.motion_modules.{i}.{k}"
                        for k in layer.state_dict()
                    }
                )
            self._load(sub, names)
        if self.use_audio:
            self.audio_proj = AudioProjModel(
                math.prod(window_shape(cfg.audio)),
                cfg.audio.proj_hidden_dim,
                cfg.audio.proj_tokens,
                cfg.unet.cross_attention_dim,
            )
            self._load(
                folder / components["audio_proj"],
                {k: k for k in self.audio_proj.state_dict()},
                self.audio_proj,
            )
        self.use_face_locator = "face_locator" in components
        if self.use_face_locator:
            self.face_locator = FaceLocator(
                cfg.unet.block_out_channels[0], emo.face_locator_channels
            )
            self._load(
                folder / components["face_locator"],
                {k: k for k in self.face_locator.state_dict()},
                self.face_locator,
            )
        self.eval()

    @classmethod
    def from_exported(cls, folder: str | Path) -> EMOTwin:
        """The twin of an exported folder."""
        folder = Path(folder)
        index = read_json(folder / INDEX)
        return cls(
            from_dict(Config, index["config"], str(folder / INDEX)), folder, index["components"]
        )

    def _motion_module(self, block: str, i: int):
        kind, _, b = block.partition(".")
        owner = (
            self.motion_adapter.mid_block
            if kind == "mid_block"
            else getattr(self.motion_adapter, kind)[int(b)]
        )
        return owner.motion_modules[i]

    def _load(self, sub: Path, names: dict, module: nn.Module | None = None) -> None:
        from safetensors.torch import load_file

        sd = load_file(str(sub / "diffusion_pytorch_model.safetensors"))
        target = module if module is not None else self
        own = {ours: sd[theirs] for ours, theirs in names.items()}
        missing, unexpected = target.load_state_dict(own, strict=False)
        missing = [m for m in missing if m in names]
        if missing:
            raise KeyError(f"{sub}: missing {missing[:5]}")

    def _temporal(self, block: str, i: int, x, motion, speed_tokens):
        """Temporal module (block, i) on x (B*F, C, H, W), the motion features prepended."""
        mm = self._motion_module(block, i)
        f = self.num_frames
        b = x.shape[0] // f
        n = 0
        if motion is not None:
            m = motion[(block, i)]
            n = m.shape[0] // b
            x = torch.cat(
                [m.reshape(b, n, *m.shape[1:]), x.reshape(b, f, *x.shape[1:])], 1
            ).flatten(0, 1)
        frames = n + f
        bf, c, h, w = x.shape
        residual = x
        hs = mm.norm(x.reshape(b, frames, c, h, w).permute(0, 2, 1, 3, 4))
        hs = mm.proj_in(hs.permute(0, 3, 4, 2, 1).reshape(b * h * w, frames, c))
        for blk in mm.transformer_blocks:
            hs = blk(hs)
        if self.use_speed and speed_tokens is not None:
            layer = self.speed_layers[f"{block}_{i}".replace(".", "_")]
            q = layer.speed_norm(hs) + sinusoidal(self.max_positions, c)[:frames]
            s = (
                speed_tokens
                + sinusoidal(self.max_positions, speed_tokens.shape[-1])[
                    n : n + speed_tokens.shape[1]
                ]
            )
            out = layer.speed_attn(q.reshape(b, h * w * frames, c), encoder_hidden_states=s)
            hs = hs + out.reshape(b * h * w, frames, c)
        hs = mm.proj_out(hs).reshape(b, h, w, frames, c).permute(0, 3, 4, 1, 2).reshape(bf, c, h, w)
        out = hs + residual
        return out.reshape(b, frames, c, h, w)[:, n:].flatten(0, 1)

    @torch.no_grad()
    def encode_reference(self, reference: torch.Tensor, motion: torch.Tensor | None = None):
        """ReferenceNet once: ({block name: tokens (B, S, C)}, {(block, i): (B*n, C, h, w)})."""
        b = reference.shape[0]
        n = self.n_motion if motion is None else motion.shape[1]
        x = reference if motion is None else torch.cat([reference, motion.flatten(0, 1)])
        tokens, feats, hooks = {}, {}, []
        for name, mod in self.reference_unet.named_modules():
            if isinstance(mod, BasicTransformerBlock):
                hooks.append(
                    mod.norm1.register_forward_hook(
                        lambda m, i, o, name=name: tokens.__setitem__(name, o)
                    )
                )
        for block, i, mod in _layers(self.reference_unet):
            hooks.append(
                mod.register_forward_hook(
                    lambda m, inp, o, key=(block, i): feats.__setitem__(
                        key, o[0] if isinstance(o, tuple) else o
                    )
                )
            )
        ctx = torch.zeros(x.shape[0], 1, self.reference_unet.config.cross_attention_dim)
        self.reference_unet(x, torch.zeros(x.shape[0], dtype=torch.long), ctx)
        for h in hooks:
            h.remove()
        refs = {k: v[:b] for k, v in tokens.items()}
        motion_feats = {
            k: (torch.zeros_like(v[:1]).repeat(b * n, 1, 1, 1) if motion is None else v[b:])
            for k, v in feats.items()
        }
        return refs, motion_feats

    @torch.no_grad()
    def forward(
        self,
        latents,
        timesteps,
        reference,
        motion=None,
        audio=None,
        face_mask=None,
        speed=None,
        keep=None,
    ):
        """latents (B, F, 4, h, w); timesteps (B,); reference (B, 4, h, w); motion (B, n, 4, h, w)
        or None; audio (B, F, 2m+1, layers, dim); face_mask (B, H, W); speed (B, F);
        keep {condition: (B,) bool}. Returns the prediction (B, F, 4, h, w)."""
        keep = keep or {}
        b, f, c, h, w = latents.shape
        self.num_frames = f
        refs, motion_feats = self.encode_reference(reference, motion)

        def row(name, t):
            return (
                t
                if name not in keep
                else t * keep[name].to(t.dtype).reshape(-1, *([1] * (t.ndim - 1)))
            )  # noqa: E731

        if "motion" in keep:
            n = next(iter(motion_feats.values())).shape[0] // b
            k = keep["motion"].repeat_interleave(n).to(torch.float32).reshape(-1, 1, 1, 1)
            motion_feats = {key: v * k for key, v in motion_feats.items()}
        for name, proc in self.processors.items():
            block = name[: -len(".attn1.processor")]
            proc.reference = refs.get(block)
            proc.keep = keep.get("reference")
            proc.num_frames = f
        speed_tokens = row("speed", self.speed_encoder(speed)) if self.use_speed else None
        hooks = []
        if self.use_temporal:
            for block, i, mod in _layers(self.denoising_unet):

                def hook(m, inp, out, block=block, i=i):
                    x = out[0] if isinstance(out, tuple) else out
                    y = self._temporal(block, i, x, motion_feats, speed_tokens)
                    return (y,) if isinstance(out, tuple) else y

                hooks.append(mod.register_forward_hook(hook))
        if self.use_face_locator:
            down = self.config.model.vae.factor
            mask = face_mask if face_mask is not None else torch.ones(b, down * h, down * w)
            res = self.face_locator(mask).repeat_interleave(f, 0)
            hooks.append(self.denoising_unet.conv_in.register_forward_hook(lambda m, i, o: o + res))
        if self.use_audio:
            tokens = row("audio", self.audio_proj(audio))
            ctx = tokens.flatten(0, 1)  # (B*F, K, D)
        else:
            ctx = torch.zeros(b * f, 1, self.denoising_unet.config.cross_attention_dim)
        try:
            out = self.denoising_unet(
                latents.flatten(0, 1), timesteps.repeat_interleave(f), ctx
            ).sample
        finally:
            for hk in hooks:
                hk.remove()
        return out.reshape(b, f, *out.shape[1:])
