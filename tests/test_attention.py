"""Every attention implementation against XLA's materialised-score attention: values and
gradients in float32 (within float32 rounding) and bfloat16, with the model's key masks
(reference drop), cross-attention to another key length and short temporal attention; the
chunked one's memory does not grow with the score matrix; `auto`'s choice per platform."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from emo_jax.config import ConfigError, load_config
from emo_jax.models.emo import EMOModel, encode_reference, init_params
from emo_jax.nn import attention
from emo_jax.nn.attention import choose, dot_product_attention
from emo_jax.nn.attention_chunked import chunked_attention

# float32, of each array's largest magnitude: outputs of order 1-30 and gradients up to ~160,
# sums over <= 700 keys (measured <= 1.1e-6; an elementwise bound fails on rounding of small
# gradient entries)
F32_TOL = 2e-6
BF16_TOL = 8e-3  # bfloat16: one ulp at 1.0, for outputs of order 0.5


def case(t: int, s: int, heads: int = 2, dim: int = 40, batch: int = 3, masked: bool = True):
    """q (B, T, H, D), k, v (B, S, H, D) and a reference-drop key mask: sample 0 keeps all
    keys, the others drop the last keys (their reference tokens)."""
    rng = np.random.default_rng(t * 1000 + s)
    q, k, v = (rng.standard_normal((batch, n, heads, dim), np.float32) for n in (t, s, s))
    keep = np.arange(s)[None] < np.array([s] + [s // 2] * (batch - 1))[:, None]  # (B, S)
    return jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(keep) if masked else None


def xla(q, k, v, mask):
    return dot_product_attention(q, k, v, mask, "xla")


def value_and_grads(fn, q, k, v, mask):
    """The output and d(weighted sum of squares)/d(q, k, v)."""
    weights = jnp.arange(q.shape[-1], dtype=jnp.float32)
    loss = lambda q, k, v: (fn(q, k, v, mask).astype(jnp.float32) ** 2 * weights).sum()  # noqa: E731
    return (fn(q, k, v, mask), *jax.grad(loss, argnums=(0, 1, 2))(q, k, v))


def assert_close(got, want, tol):
    """Each array within `tol` of its largest magnitude."""
    for g, w in zip(got, want):
        g, w = np.float64(g), np.float64(w)
        assert g.shape == w.shape
        err = np.max(np.abs(g - w)) / np.max(np.abs(w))
        assert err < tol, f"{err:.2e} of the largest magnitude"


CASES = {
    "reference": (300, 700, True),  # self + reference tokens, the reference dropped for some
    "cross": (300, 37, False),  # audio-attention: another key length
    "temporal": (16, 16, False),  # frames of one position
}


@pytest.mark.parametrize("name", CASES)
def test_chunked_matches_xla_float32(name):
    """Blocks of 128 x 256 (several of each, the last ones padded), forward and backward."""
    t, s, masked = CASES[name]
    q, k, v, mask = case(t, s, masked=masked)
    chunked = lambda q, k, v, m: chunked_attention(q, k, v, m, block_q=128, block_k=256)  # noqa: E731
    assert_close(
        value_and_grads(chunked, q, k, v, mask), value_and_grads(xla, q, k, v, mask), F32_TOL
    )


def test_chunked_matches_xla_bfloat16():
    q, k, v, mask = case(300, 700)
    want = xla(q, k, v, mask)
    bf = lambda x: x.astype(jnp.bfloat16)  # noqa: E731
    got = chunked_attention(bf(q), bf(k), bf(v), mask, block_q=128, block_k=256)
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.float32(got), want, atol=BF16_TOL)
    np.testing.assert_allclose(
        np.float32(got), np.float32(xla(bf(q), bf(k), bf(v), mask)), atol=BF16_TOL
    )


def test_chunked_holds_no_score_matrix():
    """The compiled gradient's temporaries stay far below one float32 score matrix."""
    b, t, s, h, d = 1, 4096, 8192, 2, 40
    x = jax.ShapeDtypeStruct((b, t, h, d), jnp.float32)
    kv = jax.ShapeDtypeStruct((b, s, h, d), jnp.float32)
    scores = b * h * t * s * 4

    def temp(fn):
        grad = jax.grad(lambda q, k, v: fn(q, k, v).sum(), argnums=(0, 1, 2))
        return jax.jit(grad).lower(x, kv, kv).compile().memory_analysis().temp_size_in_bytes

    assert temp(lambda q, k, v: jax.nn.dot_product_attention(q, k, v)) > scores
    assert temp(chunked_attention) < scores / 8


@pytest.mark.slow
def test_splash_matches_xla_in_interpret_mode():
    """The Pallas TPU kernel run by the Pallas interpreter on the CPU (about 40 s)."""
    from emo_jax.nn.attention_splash import splash_attention

    q, k, v, mask = case(60, 150, heads=1, batch=2)
    splash = lambda q, k, v, m: splash_attention(q, k, v, m, interpret=True)  # noqa: E731
    assert_close(
        value_and_grads(splash, q, k, v, mask), value_and_grads(xla, q, k, v, mask), F32_TOL
    )


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cudnn needs an NVIDIA GPU")
def test_cudnn_matches_xla_bfloat16():
    bf = lambda x: x.astype(jnp.bfloat16)  # noqa: E731
    q, k, v, mask = (bf(x) if x.dtype == jnp.float32 else x for x in case(300, 700))
    got = dot_product_attention(q, k, v, mask, "cudnn")
    np.testing.assert_allclose(np.float32(got), np.float32(xla(q, k, v, mask)), atol=BF16_TOL)


@pytest.mark.slow
def test_emo_model_same_with_chunked_attention():
    """The tiny EMO denoiser (reference-, temporal, audio and speed attention; the reference
    dropped for one sample) gives the same noise prediction with `chunked` as with `xla`
    (two compilations of the tiny model: minutes on a loaded machine)."""
    cfg = load_config("configs/model/tiny.yaml").model
    params = init_params(EMOModel(cfg), seed=0)
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))  # zero-initialised layers made live
    params = tree.unflatten(
        [
            x if np.any(np.asarray(x)) else 0.05 * jax.random.normal(kk, x.shape)
            for kk, x in zip(keys, leaves)
        ]
    )
    rng = np.random.default_rng(0)
    b, f, n, size = 2, 5, 2, 16
    normal = lambda *shape: jnp.asarray(rng.standard_normal(shape, np.float32))  # noqa: E731
    audio = normal(b, f, 2 * cfg.audio.window + 1, cfg.audio.mel_subframes, cfg.audio.n_mels)
    face = jnp.asarray(rng.uniform(size=(b, 8 * size, 8 * size)) > 0.5, jnp.float32)
    speed = jnp.asarray(rng.uniform(0, 1.5, (b, f)), jnp.float32)
    latents, reference, motion = (
        normal(b, f, size, size, 4),
        normal(b, size, size, 4),
        normal(b, n, size, size, 4),
    )

    def predict(params, kind):
        model = EMOModel(dataclasses.replace(cfg, attention=kind))
        features = encode_reference(model, params, reference, motion)
        keep = {"reference": jnp.array([True, False])}
        return model.apply(
            {"params": params}, latents, jnp.array([321]), features, audio, face, speed, keep
        )

    predict = jax.jit(predict, static_argnums=1)
    want, got = predict(params, "xla"), predict(params, "chunked")
    assert np.abs(np.asarray(want)).max() > 0.1
    assert_close([got], [want], F32_TOL)


def test_config_reaches_every_attention(monkeypatch):
    """`model.attention` reaches all attention layers of ReferenceNet and denoiser: spatial,
    reference-, audio-, temporal and speed attention (traced, not compiled)."""
    cfg = load_config("configs/model/tiny.yaml").model
    seen = []
    real = attention.choose
    monkeypatch.setattr(attention, "choose", lambda kind, *a: seen.append(kind) or real(kind, *a))
    model = EMOModel(dataclasses.replace(cfg, attention="chunked"))
    params = jax.eval_shape(lambda: init_params(model, seed=0))
    b, f, size = 1, 3, 16
    z = lambda *shape: jnp.zeros(shape, jnp.float32)  # noqa: E731
    audio = z(b, f, 2 * cfg.audio.window + 1, cfg.audio.mel_subframes, cfg.audio.n_mels)
    seen.clear()

    def predict(params):
        features = encode_reference(model, params, z(b, size, size, 4), z(b, 2, size, size, 4))
        return model.apply(
            {"params": params}, z(b, f, size, size, 4), 1, features, audio, None, z(b, f)
        )

    jax.eval_shape(predict, params)
    modules = [p for p in flatten_dict(params) if p[-2] == "to_q"]
    assert len(seen) == len(modules) > 10 and set(seen) == {"chunked"}


def test_auto_choice(monkeypatch):
    """Short attentions stay xla; long ones: splash on TPU, cudnn on GPU in half precision
    with head sizes cuDNN takes, chunked otherwise."""
    for backend, dtype, dim, want in [
        ("tpu", jnp.float32, 40, "splash"),
        ("gpu", jnp.bfloat16, 40, "cudnn"),
        ("gpu", jnp.bfloat16, 160, "chunked"),
        ("gpu", jnp.float32, 40, "chunked"),
        ("cpu", jnp.bfloat16, 40, "chunked"),
    ]:
        monkeypatch.setattr(attention.jax, "default_backend", lambda b=backend: b)
        assert choose("auto", 4096, 8192, dim, dtype) == want
        assert choose("auto", 256, 512, dim, dtype) == "xla"
        assert choose("chunked", 16, 16, dim, dtype) == "chunked"


def test_auto_choice_follows_the_mesh():
    """Under a mesh (`jax.set_mesh`, as generation and training set it) the mesh's platform
    decides."""
    with jax.set_mesh(jax.make_mesh((1,), ("data",))):
        assert choose("auto", 4096, 8192, 40, jnp.bfloat16) == "chunked"  # a CPU mesh


def test_config_rejects_unknown_attention():
    with pytest.raises(ConfigError, match="model.attention: 'flash' is not one of"):
        load_config("configs/model/tiny.yaml", ["model.attention=flash"])
