"""Weight files: safetensors written by emo_jax read back bit-exactly, by emo_jax and by the
safetensors library; bfloat16 included."""

import sys
from pathlib import Path

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


def _rss_file_kib() -> int:
    """This process's resident pages of mapped files (Linux /proc)."""
    status = Path("/proc/self/status").read_text()
    return int(status.split("RssFile:")[1].split()[0])


@pytest.mark.skipif(sys.platform != "linux", reason="/proc and madvise: Linux")
def test_pickle_tensors_read_once_leave_no_file_pages(tmp_path):
    """A memory-mapped pickle's tensor is copied out on access and the file's pages it was read
    from leave the resident set, so a checkpoint is not held twice (the file and the copies)."""
    value = torch.randn(16, 1024, 1024)  # 64 MiB
    torch.save({"w": value, "b": value[0, 0].clone()}, tmp_path / "a.pth")
    state = load_state_dict(tmp_path / "a.pth")
    before = _rss_file_kib()
    w = state["w"]
    assert _rss_file_kib() - before < 16 * 1024  # without dropping the pages: +64 MiB
    assert np.array_equal(w, value.numpy()) and np.array_equal(state["w"], w)
    assert np.array_equal(state["b"], value[0, 0].numpy())


def test_legacy_pickle_reads_twice_the_same(tmp_path):
    """The legacy (not memory-mappable) format is held whole: nothing is dropped from it."""
    value = torch.randn(256, 1024)
    torch.save({"w": value}, tmp_path / "a.pth", _use_new_zipfile_serialization=False)
    state = load_state_dict(tmp_path / "a.pth")
    assert np.array_equal(state["w"], value.numpy()) and np.array_equal(state["w"], state["w"])
