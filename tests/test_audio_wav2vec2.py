"""Wav2Vec2Model: parity with transformers (random weights, tiny configs), strict loading of
transformers folders in both weight-norm layouts, bit-exact round trips, full-size count."""

import json

import jax
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from transformers import Wav2Vec2Config as TorchConfig
from transformers import Wav2Vec2ForCTC
from transformers import Wav2Vec2Model as TorchModel

from emo_jax.config import Wav2Vec2Config
from emo_jax.errors import InputError
from emo_jax.models.inventory import count
from emo_jax.models.wav2vec2 import WAV2VEC2_FORMAT, Wav2Vec2Model
from emo_jax.weights import pretrained

TINY = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    conv_dim=(16, 24, 24),
    conv_stride=(5, 2, 2),
    conv_kernel=(10, 3, 2),
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=4,
)
VARIANTS = {
    "group-postln": dict(feat_extract_norm="group", do_stable_layer_norm=False),
    "layer-preln": dict(
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
        conv_bias=True,
        num_conv_pos_embeddings=15,
        layer_norm_eps=1e-6,
    ),
    "layer-postln-relu": dict(
        feat_extract_norm="layer",
        do_stable_layer_norm=False,
        hidden_act="relu",
        feat_extract_activation="gelu_new",
        mask_time_prob=0.0,
    ),
}

# facebook/wav2vec2-base-960h's config.json (a Wav2Vec2ForCTC checkpoint, transformers 4.7).
BASE_960H = {
    "activation_dropout": 0.1,
    "apply_spec_augment": True,
    "architectures": ["Wav2Vec2ForCTC"],
    "attention_dropout": 0.1,
    "bos_token_id": 1,
    "codevector_dim": 256,
    "contrastive_logits_temperature": 0.1,
    "conv_bias": False,
    "conv_dim": [512, 512, 512, 512, 512, 512, 512],
    "conv_kernel": [10, 3, 3, 3, 3, 2, 2],
    "conv_stride": [5, 2, 2, 2, 2, 2, 2],
    "ctc_loss_reduction": "sum",
    "ctc_zero_infinity": False,
    "diversity_loss_weight": 0.1,
    "do_stable_layer_norm": False,
    "eos_token_id": 2,
    "feat_extract_activation": "gelu",
    "feat_extract_dropout": 0.0,
    "feat_extract_norm": "group",
    "feat_proj_dropout": 0.1,
    "feat_quantizer_dropout": 0.0,
    "final_dropout": 0.1,
    "gradient_checkpointing": False,
    "hidden_act": "gelu",
    "hidden_dropout": 0.1,
    "hidden_dropout_prob": 0.1,
    "hidden_size": 768,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-05,
    "layerdrop": 0.1,
    "mask_feature_length": 10,
    "mask_feature_prob": 0.0,
    "mask_time_length": 10,
    "mask_time_prob": 0.05,
    "model_type": "wav2vec2",
    "num_attention_heads": 12,
    "num_codevector_groups": 2,
    "num_codevectors_per_group": 320,
    "num_conv_pos_embedding_groups": 16,
    "num_conv_pos_embeddings": 128,
    "num_feat_extract_layers": 7,
    "num_hidden_layers": 12,
    "num_negatives": 100,
    "pad_token_id": 0,
    "proj_codevector_dim": 256,
    "transformers_version": "4.7.0.dev0",
    "vocab_size": 32,
}


def torch_model(variant: str, seed: int = 0, cls=TorchModel):
    """A transformers model with random weights (norms and biases perturbed too)."""
    torch.manual_seed(seed)
    model = cls(TorchConfig(**{**TINY, **VARIANTS[variant]})).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def waveform(n: int = 2, length: int = 1900, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, length)).astype(np.float32)


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_parity_with_transformers(variant, tmp_path):
    ref = torch_model(variant)
    ref.save_pretrained(tmp_path)
    x = waveform()
    with torch.no_grad():
        want = ref(torch.from_numpy(x), output_hidden_states=True)
    module, params = Wav2Vec2Model.from_pretrained(tmp_path)
    got = module.apply({"params": params}, x)
    assert len(got.hidden_states) == len(want.hidden_states) == TINY["num_hidden_layers"] + 1
    for g, w in zip(got.hidden_states, want.hidden_states):
        assert g.shape == tuple(w.shape)
        assert rel_err(g, w.numpy()) < 1e-4
    assert rel_err(got.last_hidden_state, want.last_hidden_state.numpy()) < 1e-4


@pytest.mark.parametrize("variant", ["group-postln", "layer-preln"])
def test_padding_with_mask_leaves_valid_frames_unchanged(variant, tmp_path):
    torch_model(variant).save_pretrained(tmp_path)
    module, params = Wav2Vec2Model.from_pretrained(tmp_path)
    x = waveform(1, 1500)
    padded = np.concatenate([x, waveform(1, 900, seed=1)], axis=1)
    mask = np.arange(padded.shape[1])[None] < x.shape[1]
    plain = module.apply({"params": params}, x)
    masked = module.apply({"params": params}, padded, mask)
    frames = plain.last_hidden_state.shape[1]
    for a, b in zip(masked.hidden_states, plain.hidden_states):
        assert rel_err(a[:, :frames], b) < 1e-5


def test_round_trip_bit_exact(tmp_path):
    ref = torch_model("group-postln")
    ref.save_pretrained(tmp_path / "torch")
    module, params = Wav2Vec2Model.from_pretrained(tmp_path / "torch")
    Wav2Vec2Model.save_pretrained(params, module.config, tmp_path / "ours")
    # ours -> transformers: the same tensors, bit for bit
    back = TorchModel.from_pretrained(tmp_path / "ours")
    want, got = ref.state_dict(), back.state_dict()
    assert set(want) == set(got)
    for k in want:
        assert torch.equal(want[k], got[k]), k
    # the file written is the one transformers writes, key for key
    theirs = load_file(tmp_path / "torch" / "model.safetensors")
    ours = load_file(tmp_path / "ours" / "model.safetensors")
    assert set(theirs) == set(ours)
    assert "encoder.pos_conv_embed.conv.parametrizations.weight.original0" in ours
    for k in theirs:
        assert np.array_equal(theirs[k], ours[k]), k
    config = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert config["model_type"] == "wav2vec2" and config["architectures"] == ["Wav2Vec2Model"]
    # and back into Flax: identical params
    _, again = Wav2Vec2Model.from_pretrained(tmp_path / "ours")
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(again)):
        assert np.array_equal(a, b)


def test_ctc_checkpoint_with_legacy_weight_norm_names(tmp_path):
    """A ForCTC .bin with `weight_g/weight_v` (as on the hub) loads its `wav2vec2.` part."""
    ctc = torch_model("group-postln", seed=3, cls=Wav2Vec2ForCTC)
    ctc.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    legacy = {
        k.replace("parametrizations.weight.original0", "weight_g").replace(
            "parametrizations.weight.original1", "weight_v"
        ): v
        for k, v in ctc.state_dict().items()
    }
    assert any(k.endswith("weight_g") for k in legacy) and "lm_head.weight" in legacy
    torch.save(legacy, tmp_path / "pytorch_model.bin")
    x = waveform(1)
    with torch.no_grad():
        want = ctc.wav2vec2(torch.from_numpy(x), output_hidden_states=True)
    module, params = Wav2Vec2Model.from_pretrained(tmp_path)
    got = module.apply({"params": params}, x)
    for g, w in zip(got.hidden_states, want.hidden_states):
        assert rel_err(g, w.numpy()) < 1e-4


def test_base_960h_config_loads_and_parameter_count_matches(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(BASE_960H))
    cfg = pretrained.read_config(tmp_path, WAV2VEC2_FORMAT)
    assert cfg == Wav2Vec2Config(feat_proj_dropout=0.1)
    module = WAV2VEC2_FORMAT.build(cfg, None)
    ours = count(pretrained.abstract_params(module, WAV2VEC2_FORMAT, cfg))
    with torch.device("meta"):
        theirs = sum(p.numel() for p in TorchModel(TorchConfig(**BASE_960H)).parameters())
    assert ours == theirs == 94_371_712


@pytest.mark.parametrize(
    "change, message",
    [
        ({"add_adapter": True}, "adapters"),
        ({"feat_extract_norm": "batch"}, "feat_extract_norm"),
        ({"hidden_act": "swiglu"}, "hidden_act"),
        ({"some_new_switch": 1}, "some_new_switch"),
    ],
)
def test_unsupported_config_is_a_clear_error(change, message, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({**BASE_960H, **change}))
    with pytest.raises(InputError, match=message):
        pretrained.read_config(tmp_path, WAV2VEC2_FORMAT)


def test_strict_loading_names_missing_keys(tmp_path):
    ref = torch_model("group-postln")
    ref.save_pretrained(tmp_path)
    state = {k: v.numpy() for k, v in ref.state_dict().items()}
    del state["encoder.layers.1.attention.k_proj.bias"]
    from safetensors.numpy import save_file

    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(
        InputError, match=r"missing key.*encoder\.layers\.1\.attention\.k_proj\.bias"
    ):
        Wav2Vec2Model.from_pretrained(tmp_path)


def test_activations_match_transformers():
    from transformers.activations import ACT2FN

    from emo_jax.models.wav2vec2 import TRANSFORMERS_ACTIVATIONS

    x = np.linspace(-12, 12, 2001, dtype=np.float32)
    for name, fn in TRANSFORMERS_ACTIVATIONS.items():
        want = ACT2FN[name](torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(fn(x), want, atol=1e-5, err_msg=name)
