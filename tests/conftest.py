"""Shared test set-up: quiet PyTorch references, a persistent JAX compilation cache, a tiny
face-recognition model."""

import os
import tempfile

import pytest

os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# Through the environment, so that the commands the tests run in child processes (README
# blocks, the CLI, training runs) share the compiled programs too.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "emo_jax_jit_cache")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")


@pytest.fixture(scope="session")
def tiny_arcface(tmp_path_factory):
    """A small conv net with the face-recognition model's interface (112 x 112 -> 512), as
    ONNX, and its torch twin."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx", reason="torch.onnx.export needs onnx (the test extra)")
    pytest.importorskip("onnxruntime", reason="pip install 'emo-jax[faces]'")
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 5, stride=4),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(8 * 27 * 27, 512),
    ).eval()
    path = tmp_path_factory.mktemp("arcface") / "w600k_tiny.onnx"
    torch.onnx.export(
        net,
        (torch.zeros(1, 3, 112, 112),),
        str(path),
        dynamo=False,
        input_names=["input.1"],
        output_names=["embedding"],
        dynamic_axes={"input.1": {0: "n"}},
    )
    return path, net
