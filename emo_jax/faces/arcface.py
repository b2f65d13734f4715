"""The ArcFace identity embedding as insightface computes it: the face aligned to 112 x 112 by
the similarity transform that best maps its five points onto insightface's `ARCFACE_DST`
template (Umeyama, as skimage estimates it), pixels (x - 127.5) / 127.5 in RGB order (raw
pixels for a model that normalises them itself: insightface's rule, a Sub and a Mul among the
graph's first 8 nodes, read with `onnx` where installed), the recognition ONNX model run with
onnxruntime, the output L2-normalised.

The model is the user's file (not in any wheel): e.g. `w600k_r50.onnx` of insightface's
`buffalo_l` pack, or `glintr100.onnx` of its `antelopev2` pack (what Hallo's release carries
in `face_analysis/models/`, the embedding its weights were trained with); it takes
(N, 3, 112, 112) float32 and gives (N, 512). `pip install 'emo-jax[faces]'` installs
onnxruntime and onnx.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from emo_jax.errors import InputError

ARCFACE_SIZE = 112
ARCFACE_DST = np.array(  # insightface's five-point template in 112 x 112 pixels
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    np.float32,
)


def input_normalisation(path: Path) -> tuple[float, float]:
    """(mean, std) of the pixels the model at `path` takes, by insightface's `ArcFaceONNX`
    rule: (0, 1) if its first 8 nodes hold a Sub and a Mul (MXNet exports that normalise in
    the graph), else (127.5, 127.5); (127.5, 127.5) without the `onnx` package."""
    try:
        import onnx
    except ImportError:
        return 127.5, 127.5
    nodes = [n.name for n in onnx.load(str(path), load_external_data=False).graph.node[:8]]
    sub = any(n.startswith(("Sub", "_minus")) for n in nodes)
    mul = any(n.startswith(("Mul", "_mul")) for n in nodes)
    return (0.0, 1.0) if sub and mul else (127.5, 127.5)


def align(rgb: np.ndarray, points5: np.ndarray, size: int = ARCFACE_SIZE) -> np.ndarray:
    """The face (size, size, 3) uint8 warped so that its five points (5, 2) land on the
    template (scaled to `size`)."""
    from skimage.transform import SimilarityTransform

    dst = ARCFACE_DST * (size / ARCFACE_SIZE)
    tform = SimilarityTransform.from_estimate(np.asarray(points5, np.float64), dst)
    return cv2.warpAffine(rgb, tform.params[:2], (size, size), borderValue=0.0)


class ArcFace:
    """The recognition model at `path` (ONNX): `embed(rgb, points5)` -> (512,) unit vector."""

    def __init__(self, path: str | Path):
        path = Path(path)
        if not path.is_file():
            raise InputError(
                f"{path}: ArcFace model not found (give insightface's recognition model: "
                "antelopev2's glintr100.onnx, Hallo's, or buffalo_l's w600k_r50.onnx)"
            )
        try:
            import onnxruntime
        except ImportError:
            raise InputError("onnxruntime is not installed: pip install 'emo-jax[faces]'") from None
        try:
            self.session = onnxruntime.InferenceSession(
                str(path), providers=["CPUExecutionProvider"]
            )
        except Exception as e:  # onnxruntime raises its own error types for a bad file
            raise InputError(f"{path}: not a readable ONNX model ({type(e).__name__})") from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or list(inputs[0].shape[1:]) != [3, ARCFACE_SIZE, ARCFACE_SIZE]:
            shape = [list(i.shape) for i in inputs]
            raise InputError(f"{path}: expected one input (N, 3, 112, 112), the model has {shape}")
        self.input = inputs[0].name
        self.path = path
        self.mean, self.std = input_normalisation(path)

    def embed_aligned(self, faces: np.ndarray, normalize: bool = True) -> np.ndarray:
        """Aligned faces (N, 112, 112, 3) uint8 RGB -> embeddings (N, D), each of unit length
        (`normalize`; else the model's raw output, insightface's `face.embedding`)."""
        blob = (faces.astype(np.float32).transpose(0, 3, 1, 2) - self.mean) / self.std
        out = self.session.run(None, {self.input: blob})[0].reshape(len(faces), -1)
        return out / np.linalg.norm(out, axis=1, keepdims=True) if normalize else out

    def embed(self, rgb: np.ndarray, points5: np.ndarray, normalize: bool = True) -> np.ndarray:
        """The embedding (D,) of the face with five points (5, 2) in image `rgb` (H, W, 3)."""
        return self.embed_aligned(align(rgb, points5)[None], normalize)[0]
