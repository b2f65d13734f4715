"""`HalloPipeline`: what `EMOPipeline.from_pretrained` gives for a model of family "hallo"
(Hallo's `net.pth` converted with `emo-jax convert --src-format hallo`): Hallo's inputs and
clip loop (scripts/inference.py, hallo/animate/face_animate.py) around `HalloModel`.

Inputs, as Hallo's ImageProcessor / AudioProcessor prepare them:
- the portrait: the square crop around the face (`prepare_reference`, as for EMO; Hallo takes
  an already square image) resized to the model's resolution (512 for Hallo's weights);
- the face embedding: ArcFace (`emo_jax.faces.arcface`) of the face's five points, unnormalised
  as insightface's `face.embedding`, when `face_model` (or model.hallo.face_model, e.g. for
  the app) names the recognition model
  (Hallo's release: face_analysis/models/glintr100.onnx, insightface's antelopev2); else
  zeros, with a warning (Hallo's own fallback);
- the face region (the face locator's input, white box on black, RGB in [0, 1]) and the blurred
  full (background) / face / lip masks: from the 68 landmarks (`emo_jax.faces.regions`), else
  from the face box (the lips then at `LIPS_IN_FACE_BOX` of it); the masks resized to each
  UNet level's side (latent side / 2^k), flattened, the same for every frame;
- the audio: `emo_jax.audio.hallo` (wav2vec2 interpolated to 25 fps, every layer), padded to
  whole clips; each clip's windows are frames f-2 .. f+2 of the padded track, the ends repeated.

Clip loop: clips of f frames (model.emo.n_frames; Hallo: 16) with n motion frames (Hallo: 2).
Per clip: the ReferenceNet bank of [reference, motion frames] (`HalloModel.encode_reference`),
once; the first clip's motion frames are the portrait repeated n times, later clips' the last
n generated frames (decoded, clipped to [-1, 1], re-encoded: not the rounded uint8 ones).
Sampling: the bundle's diffusion config (Hallo's: DDIM, v-prediction, zero terminal SNR,
trailing, 40 steps), one guidance scale that drops the face embedding, the audio and the face
locator together: u + s (c - u). The video is trimmed to the audio's frame count. The scale and
the region weights (motion_scale) are arguments of the compiled clip function, so a new value
does not recompile; with `devices` > 1 the pair (u, c) x frames is split over the devices.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Iterator
from typing import Any, NamedTuple

import cv2
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from emo_jax.audio.hallo import HalloAudioFeatures
from emo_jax.config import AudioConfig, Config, DiffusionConfig, ModelConfig
from emo_jax.diffusion import make_sampler, sample
from emo_jax.diffusion.samplers import Sampler
from emo_jax.errors import InputError
from emo_jax.faces.arcface import ArcFace
from emo_jax.faces.detect import Face, make_detector
from emo_jax.faces.regions import box_region_masks, region_masks
from emo_jax.models.emo import encode_reference
from emo_jax.models.hallo import HalloModel
from emo_jax.models.vae import AutoencoderKL, scale_latents, unscale_latents
from emo_jax.pipeline.inputs import Reference
from emo_jax.pipeline.pipeline import (
    FAMILIES,
    Clip,
    EMOPipeline,
    Options,
    ProgressFn,
    reporting,
)
from emo_jax.pipeline.sampling import MeshPlacement, without_guidance

LIPS_IN_FACE_BOX = np.array([0.3, 0.72, 0.7, 0.92])  # x0, y0, x1, y1 as fractions of the box
MASK_NAMES = ("background", "face", "lip")  # Hallo's full (= background), face, lip masks


class NoFaceModelWarning(UserWarning):
    """No ArcFace model was given: the face embedding is zeros."""


class HalloInputs(NamedTuple):
    """The portrait's conditions, the same for every clip (a pytree: a jit argument)."""

    face_emb: np.ndarray  # (1, E) float32
    face_region: np.ndarray  # (R, R, 3) float32 in [0, 1]: the face locator's input
    masks: tuple  # per UNet level k: (full, face, lip), each (1, L_k^2) float32
    motion_scale: np.ndarray  # (3,) pose (full), face, lip weights


@dataclasses.dataclass(frozen=True)
class HalloJob:
    """Validated inputs of one video (see `EMOPipeline.generate`, which runs it)."""

    config: Config
    options: Options
    reference: Reference
    wave: np.ndarray  # raw mono waveform at config.model.audio.sample_rate (muxed into the mp4)
    audio: np.ndarray  # (clips * f, layers, dim) per-frame features of the padded track
    frames: int  # video frames: Hallo's ceil(seconds x fps)
    inputs: HalloInputs
    fps: int
    mesh: Mesh | None = None  # the devices a clip is split over (None: one)

    @property
    def num_frames(self) -> int:
        return self.frames

    @property
    def clip_frames(self) -> int:
        return self.config.model.emo.n_frames

    @property
    def num_clips(self) -> int:
        return len(self.audio) // self.clip_frames

    def windows(self, k: int) -> np.ndarray:
        """Clip k's audio windows (1, f, 2m+1, layers, dim): frames f-m .. f+m, clamped to the
        padded track (Hallo's `process_audio_emb`)."""
        f, m = self.clip_frames, self.config.model.audio.window
        idx = np.arange(k * f, (k + 1) * f)[:, None] + np.arange(-m, m + 1)  # (f, 2m+1)
        return self.audio[np.clip(idx, 0, len(self.audio) - 1)][None]


@functools.lru_cache(maxsize=1)
def audio_features(cfg: AudioConfig) -> HalloAudioFeatures:
    """The loaded wav2vec2 of `cfg` (kept for the next video)."""
    return HalloAudioFeatures(cfg)


def _pick(faces: list[Face], box: np.ndarray | None) -> Face | None:
    """The detected face nearest the centre of `box` (the one the crop was made around)."""
    if not faces or box is None:
        return faces[0] if faces else None
    centre = (box[:2] + box[2:]) / 2
    return min(faces, key=lambda f: float(np.sum(((f.box[:2] + f.box[2:]) / 2 - centre) ** 2)))


def level_masks(regions: dict[str, np.ndarray], latent: int, levels: int) -> tuple:
    """The (full, face, lip) masks (64, 64) resized to each level's side latent / 2^k,
    flattened to (1, side^2) (Hallo's ImageProcessor `attn_transform_*`)."""
    out = []
    for k in range(levels):
        side = max(1, latent >> k)
        level = []
        for name in MASK_NAMES:
            m = regions[name].astype(np.float32)
            interp = cv2.INTER_AREA if side < m.shape[0] else cv2.INTER_LINEAR
            level.append(cv2.resize(m, (side, side), interpolation=interp).reshape(1, -1))
        out.append(tuple(level))
    return tuple(out)


def hallo_inputs(
    reference: Reference,
    config: Config,
    options: Options,
    recognition: ArcFace | None = None,
    name: str = "image",
) -> HalloInputs:
    """Face embedding (by `recognition`; None: zeros), face region and masks of the prepared
    portrait (see the module doc)."""
    model, hallo = config.model, config.model.hallo
    side = reference.image.shape[0]
    face = _pick(make_detector(config.data.detector).detect(reference.image), reference.face_box)
    if face is not None and face.landmarks is not None:
        regions = region_masks(face.landmarks, side, side, options.face_expand)
    else:  # no landmarks: the face box, else (a mask given, no face) the whole image as Hallo
        box = face.box if face is not None else reference.face_box
        box = np.array([0, 0, side, side], np.float32) if box is None else box
        lips = np.tile(box[:2], 2) + LIPS_IN_FACE_BOX * np.tile(box[2:] - box[:2], 2)
        regions = box_region_masks(box, lips, side, side, options.face_expand)
    region = reference.mask if options.mask is not None else regions["face_region"]
    emb = np.zeros((1, hallo.face_embed_dim), np.float32)
    if recognition is None:
        warnings.warn(
            "no face model (--face-model .../face_analysis/models/glintr100.onnx): the face "
            "embedding is zeros, Hallo's own fallback; the identity rests on the image alone",
            NoFaceModelWarning,
            stacklevel=3,
        )
    elif face is None or face.points5 is None:
        warnings.warn(
            f"{name}: no face landmarks found (dlib's models: pip install 'emo-jax[faces]'): "
            "the face embedding is zeros",
            NoFaceModelWarning,
            stacklevel=3,
        )
    else:
        emb = recognition.embed(reference.image, face.points5, normalize=False)
        if emb.shape[-1] != hallo.face_embed_dim:
            raise InputError(
                f"{recognition.path}: embeddings of {emb.shape[-1]} values; the model takes "
                f"{hallo.face_embed_dim}"
            )
        emb = emb.reshape(1, -1).astype(np.float32)
    latent = side // model.vae.factor
    weights = [options.pose_weight, options.face_weight, options.lip_weight]
    scale = [d if w is None else w for w, d in zip(weights, hallo.motion_scale)]
    return HalloInputs(
        face_emb=emb,
        face_region=np.repeat(region[..., None], 3, axis=2).astype(np.float32),
        masks=level_masks(regions, latent, len(model.unet.block_out_channels)),
        motion_scale=np.asarray(scale, np.float32),
    )


class HalloFunctions(MeshPlacement):
    """The jitted pieces: `encode` images in [-1, 1] (N, H, W, 3) -> scaled latent means;
    `latents` one clip from its noise (conditions, reference bank and every step in one
    program; `latents_reporting` calls `on_step` after each step); `decode` scaled latents
    (k, h, w, 4) -> frames in [-1, 1] (k, H, W, 3). The guidance scale is `latents`' argument
    (the diffusion config's is not used)."""

    def __init__(
        self,
        model: ModelConfig,
        diffusion: DiffusionConfig,
        sampler: Sampler | None,
        mesh: Mesh | None = None,
    ):
        super().__init__(mesh)
        self.model = HalloModel(model)
        self.vae = AutoencoderKL(model.vae)
        self.sampler = sampler or make_sampler(diffusion)
        self.on_step = None
        self.encode = jax.jit(self._encode)
        self.decode = jax.jit(self._decode)
        self.latents = jax.jit(functools.partial(self._latents, report=False))
        self.latents_reporting = jax.jit(functools.partial(self._latents, report=True))

    @property
    def num_steps(self) -> int:
        return self.sampler.num_steps

    def _encode(self, params: Any, x: jax.Array) -> jax.Array:
        mean, _ = self.vae.apply(
            {"params": params}, x.astype(self.vae.dtype), method=AutoencoderKL.encode
        )
        return scale_latents(mean.astype(jnp.float32), self.vae.config)

    def _decode(self, params: Any, latents: jax.Array) -> jax.Array:
        z = unscale_latents(self.split_frames(latents), self.vae.config).astype(self.vae.dtype)
        x = self.vae.apply({"params": params}, z, method=AutoencoderKL.decode)
        return jnp.clip(x.astype(jnp.float32), -1.0, 1.0)

    def _tick(self, _t: jax.Array) -> None:
        if self.on_step is not None:
            self.on_step()

    def _latents(
        self,
        params: Any,
        stack: jax.Array,
        inputs: HalloInputs,
        audio: jax.Array,
        noise: jax.Array,
        key: jax.Array,
        scale: jax.Array,
        report: bool,
    ) -> jax.Array:
        """Latents (1, f, h, w, C) of one clip: stack (1+n, h, w, C) the reference and motion
        latents; audio (1, f, 2m+1, layers, dim) windows; noise (1, f, h, w, C); scale () the
        guidance scale."""
        model, f = self.model, audio.shape[1]
        region = inputs.face_region[None]
        conds = model.apply(
            {"params": params}, inputs.face_emb, audio, region, method=HalloModel.conditions
        )
        features = encode_reference(model, params, stack, conds["context"])
        masks = jax.tree_util.tree_map(lambda m: jnp.tile(m, (2 * f, 1)), inputs.masks)

        def denoise(x: jax.Array, t: jax.Array) -> jax.Array:
            if report:
                jax.debug.callback(self._tick, t)
            pair = self.split(jnp.concatenate([x, x]))  # [unconditional; conditional]
            out = model.apply(
                {"params": params}, pair, t, features, conds, masks, inputs.motion_scale
            )
            out = self.split(out)
            return out[:1] + scale * (out[1:] - out[:1])

        with self.scope():
            return sample(denoise, noise, self.sampler, key)


def hallo_functions(
    model: ModelConfig, diffusion: DiffusionConfig, mesh: Mesh | None = None
) -> HalloFunctions:
    """The shared `HalloFunctions` for these configs (any guidance scale) and mesh."""
    return _hallo_functions(model, without_guidance(diffusion), mesh)


@functools.lru_cache(maxsize=4)
def _hallo_functions(
    model: ModelConfig, diffusion: DiffusionConfig, mesh: Mesh | None
) -> HalloFunctions:
    return HalloFunctions(model, diffusion, None, mesh)


def to_uint8(x: np.ndarray) -> np.ndarray:
    """Frames in [-1, 1] -> uint8."""
    return np.round((np.asarray(x) + 1.0) * 127.5).astype(np.uint8)


class HalloPipeline(EMOPipeline):
    """Portrait + audio -> video with a Hallo-family model (see the module doc)."""

    def prepare(
        self, image: Any = None, audio: Any = None, sample_rate: int | None = None, **options: Any
    ) -> HalloJob:
        """Reads and checks every input, computes the face and audio conditions; `Options`."""
        opts = Options(**options)
        if image is None or audio is None:
            raise InputError("give both an image and an audio")
        if opts.audio_guidance_scale is not None:
            raise InputError(
                "a Hallo model has one guidance scale (--guidance), no separate audio scale"
            )
        face_model = opts.face_model or self.config.model.hallo.face_model
        recognition = None if face_model is None else ArcFace(face_model)  # fails early
        config = self.run_config(opts)
        mesh = self.mesh(config, opts, 2)  # the pair (unconditional, conditional)
        audio_cfg = config.model.audio
        if audio_cfg.encoder != "wav2vec2" or not audio_cfg.wav2vec2_path:
            raise InputError(
                f"{self.model.source}: no wav2vec2 in this Hallo bundle (convert it again with "
                "--wav2vec2 DIR, Hallo's wav2vec/wav2vec2-base-960h folder)"
            )
        reference, wave, name, fps = self.read_inputs(config, opts, image, audio, sample_rate)
        inputs = hallo_inputs(reference, config, opts, recognition, str(image))
        features, frames = audio_features(audio_cfg)(wave, config.model.emo.n_frames, name)
        return HalloJob(config, opts, reference, wave, features, frames, inputs, fps, mesh)

    def functions(self, job: HalloJob) -> HalloFunctions:
        return hallo_functions(job.config.model, job.config.diffusion, job.mesh)

    def iter_clips(self, job: HalloJob, progress: ProgressFn | None = None) -> Iterator[Clip]:
        """Generates the clips of `job` in order (see the module doc)."""
        fns, emo, vae = self.placed(job)
        f, n = job.clip_frames, job.config.model.emo.n_motion_frames
        clips, total = job.num_clips, job.num_frames
        inputs = jax.tree_util.tree_map(jnp.asarray, job.inputs)
        scale = jnp.float32(job.config.diffusion.guidance_scale)
        image = job.reference.image
        ref_latent = fns.encode(vae, jnp.asarray(image[None], jnp.float32) / 127.5 - 1.0)
        motion_latents = jnp.repeat(ref_latent, n, axis=0)  # the portrait, n times
        motion_frames = np.repeat(image[None], n, axis=0)
        seed_key = jax.random.key(job.options.seed)
        shape = (1, f, *ref_latent.shape[1:])
        for k in range(clips):
            noise_key, step_key = jax.random.split(jax.random.fold_in(seed_key, k))
            noise = jax.random.normal(noise_key, shape, jnp.float32)
            stack = jnp.concatenate([ref_latent, motion_latents])  # (1+n, h, w, C)
            with reporting(fns, progress, k, clips):
                run = fns.latents if progress is None else fns.latents_reporting
                audio = jnp.asarray(job.windows(k))
                latents = run(emo, stack, inputs, audio, noise, step_key, scale)
                latents = jax.block_until_ready(latents)
            video = self._decode(fns, vae, latents[0], job.options.decode_chunk)
            frames = to_uint8(video)
            yield Clip(
                k, frames[: min(f, total - k * f)], motion_frames, np.asarray(motion_latents)[None]
            )
            motion_latents = fns.encode(vae, jnp.asarray(video[-n:]))
            motion_frames = frames[-n:]

    def autoencode(self, job: HalloJob, frames: np.ndarray) -> np.ndarray:
        """(T, R, R, 3) uint8 frames through the autoencoder (encode -> decode)."""
        fns, vae = self.functions(job), self.model.params["vae"]
        x = jnp.asarray(frames, jnp.float32) / 127.5 - 1.0
        latents = jnp.concatenate([fns.encode(vae, x[i : i + 1]) for i in range(len(x))])
        return to_uint8(self._decode(fns, vae, latents, job.options.decode_chunk))


FAMILIES["hallo"] = HalloPipeline
