"""Weight files: safetensors written by emo_jax read back bit-exactly, by emo_jax and by the
safetensors library; bfloat16 included."""

import ml_dtypes
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from emo_jax.weights.io import load_state_dict, save_safetensors

DTYPES = [np.float32, np.float16, ml_dtypes.bfloat16, np.int64, np.uint8]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_safetensors_round_trip_is_bit_exact(dtype, tmp_path):
    rng = np.random.default_rng(0)
    value = (rng.standard_normal((3, 5)) * 100).astype(dtype)
    save_safetensors({"w": value, "b": value[0]}, tmp_path / "a.safetensors")
    back = load_state_dict(tmp_path / "a.safetensors")
    assert back["w"].dtype == value.dtype and back["w"].shape == value.shape
    assert back["w"].tobytes() == value.tobytes() and back["b"].tobytes() == value[0].tobytes()
    theirs = load_file(tmp_path / "a.safetensors")["w"]  # the library's own reader
    assert theirs.view(torch.uint8).numpy().tobytes() == value.tobytes()


def test_bfloat16_written_by_torch_reads_bit_exactly(tmp_path):
    value = torch.randn(4, 6).to(torch.bfloat16)
    save_file({"w": value}, tmp_path / "t.safetensors")
    back = load_state_dict(tmp_path / "t.safetensors")["w"]
    assert back.dtype == ml_dtypes.bfloat16
    assert back.tobytes() == value.view(torch.uint8).numpy().tobytes()
