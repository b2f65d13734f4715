"""AudioProjection: parity with Hallo's AudioProjModel (a PyTorch twin) through the shared
conversion rules, shapes, and the SD1.5-size parameter count."""

import jax
import jax.numpy as jnp
import numpy as np
import torch
from torch import nn

from emo_jax.models.audio_proj import AudioProjection
from emo_jax.models.inventory import count
from emo_jax.weights.convert import flax_to_torch, torch_to_flax


class HalloAudioProj(nn.Module):
    """Hallo's AudioProjModel, as published (flatten window, 3 Linear, ReLU, LayerNorm)."""

    def __init__(self, seq_len, blocks, channels, intermediate_dim, output_dim, context_tokens):
        super().__init__()
        self.context_tokens, self.output_dim = context_tokens, output_dim
        self.proj1 = nn.Linear(seq_len * blocks * channels, intermediate_dim)
        self.proj2 = nn.Linear(intermediate_dim, intermediate_dim)
        self.proj3 = nn.Linear(intermediate_dim, context_tokens * output_dim)
        self.norm = nn.LayerNorm(output_dim)

    def forward(self, x):  # (bz, f, w, b, c)
        bz, f = x.shape[:2]
        x = x.reshape(bz * f, -1)
        x = torch.relu(self.proj1(x))
        x = torch.relu(self.proj2(x))
        x = self.norm(self.proj3(x).reshape(bz * f, self.context_tokens, self.output_dim))
        return x.reshape(bz, f, self.context_tokens, self.output_dim)


def test_parity_with_hallo_audio_proj_model():
    torch.manual_seed(0)
    ref = HalloAudioProj(5, 3, 8, 24, 16, 4).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.1 * torch.randn_like(p))
    module = AudioProjection(output_dim=16, hidden_dim=24, num_tokens=4)
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 3, 8)).astype(np.float32)
    abstract = jax.eval_shape(module.init, jax.random.key(0), jnp.asarray(x))["params"]
    state = {k: v.numpy() for k, v in ref.state_dict().items()}
    params, _, _ = torch_to_flax(state, abstract)
    got = module.apply({"params": params}, x)
    with torch.no_grad():
        want = ref(torch.from_numpy(x)).numpy()
    assert got.shape == (2, 3, 4, 16)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    back = flax_to_torch(params)
    assert set(back) == set(state) and all(np.array_equal(back[k], state[k]) for k in state)


def test_sd15_size_parameter_count():
    """wav2vec2-base, m = 2, 12 layers, K = 32 tokens of 768 (Hallo's sizes)."""
    module = AudioProjection(output_dim=768, hidden_dim=512, num_tokens=32)
    x = jax.ShapeDtypeStruct((1, 1, 5, 12, 768), jnp.float32)
    n = count(jax.eval_shape(module.init, jax.random.key(0), x)["params"])
    with torch.device("meta"):
        ref = HalloAudioProj(5, 12, 768, 512, 768, 32)
    # 46,080 x 512 + 512  +  512 x 512 + 512  +  512 x 24,576 + 24,576  +  2 x 768
    assert n == sum(p.numel() for p in ref.parameters()) == 36_465_152
