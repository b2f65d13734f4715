"""`EMOPipeline`: portrait + audio -> talking-head video frames (and an mp4), clip after clip.

    pipe = EMOPipeline.from_pretrained("models/emo")        # or None: the built-in default
    out = pipe("portrait.png", "speech.wav", out="video.mp4", seed=0)
    out.frames                                              # (T, R, R, 3) uint8

The clip loop (paper, Inference): audio features normalised over the whole track, computed
and windowed clip by clip (memory: one encoder chunk); clips of f frames; the reference's
ReferenceNet features once per video;
clip k's motion frames are the last n frames generated in clip k-1 (re-encoded with the VAE:
the uint8 frames that are written), the first clip's are zero maps; the last clip is padded
(audio features and speeds repeat the last frame) and trimmed, so the video has exactly the
audio's frame count (`emo_jax.audio.features.num_frames`). Frames are decoded in chunks of
`decode_chunk` and streamed to the mp4 as each clip finishes, so memory does not grow with the
video's length (unless the frames are also returned). The guidance scales are arguments of
the compiled clip function (a new scale does not recompile); `devices` > 1 splits every
denoising forward's guidance passes x frames over that many devices (`emo_jax.pipeline.sampling`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from PIL import Image

from emo_jax.audio.features import AudioFeatures
from emo_jax.config import Config, apply_overrides, from_dict, load_config, to_dict
from emo_jax.data.video import VideoWriter
from emo_jax.diffusion import Guidance
from emo_jax.errors import InputError, check_output
from emo_jax.files import atomic_folder
from emo_jax.interrupt import pause_point
from emo_jax.parallel.mesh import generation_mesh
from emo_jax.pipeline.inputs import (
    DEFAULT_SPEED,
    FACE_EXPAND,
    Reference,
    prepare_reference,
    read_audio,
    read_speed_curve,
    speed_per_frame,
)
from emo_jax.pipeline.loading import LoadedModel, resolve_checkpoint
from emo_jax.pipeline.sampling import VideoFunctions, video_functions

# progress(clip, clips, step, steps): after every denoising step; clip counts from 0, step from 1.
ProgressFn = Callable[[int, int, int, int], None]


@dataclasses.dataclass(frozen=True)
class Options:
    """Generation options; None means the model config's value."""

    steps: int | None = None  # denoising steps (diffusion.num_inference_steps; paper: 40)
    sampler: str | None = None  # "ddim" | "dpmpp_2m"
    guidance_scale: float | None = None  # CFG scale (the reference scale if audio's is set)
    audio_guidance_scale: float | None = None  # separate audio scale (3 passes instead of 2)
    eta: float | None = None  # DDIM noise
    speed: Any = DEFAULT_SPEED  # degrees per frame: a constant, per-second values, or a file
    seed: int = 0
    clip_frames: int | None = None  # f (model.emo.n_frames)
    motion_frames: int | None = None  # n (model.emo.n_motion_frames)
    resolution: int | None = None  # square side in pixels (default: unet.sample_size latents)
    mask: Any = None  # face-region mask image (path / PIL / array); None: from the detected face
    face_expand: float = FACE_EXPAND  # detected face box enlargement for the mask
    face: int | None = None  # which detected face (0: the largest); None: the largest, noticed
    crop_scale: float | None = None  # crop side / face size (data.crop_scale)
    decode_chunk: int = 4  # frames per VAE decode call
    devices: int | None = None  # devices a clip is split over (parallel.generate_devices)
    # Hallo-family models only (emo_jax.pipeline.hallo):
    face_model: str | Path | None = None  # ArcFace ONNX (Hallo's: glintr100.onnx)
    pose_weight: float | None = None  # motion_scale: full-frame (pose) audio weight
    face_weight: float | None = None  # ... face (expression) audio weight
    lip_weight: float | None = None  # ... lip audio weight (None: model.hallo.motion_scale)

    def hallo_only(self) -> list[str]:
        """The Hallo-only options that are set."""
        names = ("face_model", "pose_weight", "face_weight", "lip_weight")
        return [n for n in names if getattr(self, n) is not None]


@dataclasses.dataclass(frozen=True)
class Job:
    """Validated inputs of one video."""

    config: Config  # the model config with this video's options applied
    options: Options
    reference: Reference
    wave: np.ndarray  # raw mono waveform at config.model.audio.sample_rate (muxed into the mp4)
    audio: np.ndarray  # the waveform normalised over the whole track (the features' input)
    features: AudioFeatures  # computes the features, clip by clip (`clip_audio`)
    speed: np.ndarray  # (T,) degrees per frame
    fps: int
    mesh: Mesh | None  # the devices a clip is split over (None: one)

    @property
    def num_frames(self) -> int:
        return len(self.speed)

    @property
    def guidance(self) -> Guidance:
        return Guidance.from_config(self.config.diffusion)

    @property
    def clip_frames(self) -> int:
        return self.config.model.emo.n_frames

    @property
    def num_clips(self) -> int:
        return math.ceil(self.num_frames / self.clip_frames)

    def clip_audio(self) -> Iterator[np.ndarray]:
        """Each clip's audio windows (1, f, 2m+1, layers, dim), in order, computed as they are
        needed; the last clip padded with its last frame's."""
        f = self.clip_frames
        pending = np.zeros((0, *self.features.window_shape), np.float32)
        for block in self.features.iter_windows(self.audio):
            pending = np.concatenate([pending, block])
            while len(pending) >= f:
                yield pending[None, :f]
                pending = pending[f:]
        if len(pending):
            yield np.concatenate([pending, np.repeat(pending[-1:], f - len(pending), 0)])[None]


@dataclasses.dataclass(frozen=True)
class Clip:
    """One generated clip."""

    index: int
    frames: np.ndarray  # (k, R, R, 3) uint8; k = f, or fewer for the trimmed last clip
    motion_frames: np.ndarray | None  # (n, R, R, 3) uint8 that conditioned it (None: zero maps)
    motion_latents: np.ndarray | None  # (1, n, h, w, 4) their scaled VAE latents


@dataclasses.dataclass(frozen=True)
class EMOOutput:
    """What a pipeline call returns."""

    frames: np.ndarray | None  # (T, R, R, 3) uint8 (None with return_frames=False)
    num_frames: int
    fps: int
    audio: np.ndarray  # mono waveform at `sample_rate` (the mp4's audio track)
    sample_rate: int
    reference: Reference  # the cropped portrait and face-region mask used
    path: Path | None  # the mp4, if written
    frames_dir: Path | None  # the PNG frames, if written
    seconds: float  # wall time of the generation (after `prepare`)


@contextlib.contextmanager
def reporting(fns: Any, progress: ProgressFn | None, clip: int, clips: int) -> Iterator[None]:
    """While clip `clip` of `clips` samples: each denoising step of `fns` is reported to
    `progress` (clip, clips, step, steps)."""
    step = 0

    def on_step() -> None:
        nonlocal step
        step += 1
        if progress is not None:
            progress(clip, clips, step, fns.num_steps)

    fns.on_step = on_step
    try:
        yield
    finally:
        fns.on_step = None


class EMOPipeline:
    """Portrait + audio -> video. One pipeline runs one video at a time. `from_pretrained`
    gives the subclass of the model's family (`FAMILIES`)."""

    def __init__(self, model: LoadedModel):
        self.model = model

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path | None = None,
        config: Config | str | Path | None = None,
        overrides: list[str] | None = None,
    ) -> EMOPipeline:
        """A model bundle or exported model folder, or None for the built-in default model (see
        `resolve_checkpoint`; with None and a `config`: that config with random weights).
        `config` (a Config or YAML path) replaces the checkpoint's; `overrides` are dotted
        settings such as "diffusion.sampler=dpmpp_2m". The params are read on first use
        (`self.model.params`), after `prepare` has checked the inputs."""
        if isinstance(config, (str, Path)):
            config = load_config(config)
        model = resolve_checkpoint(path, config)
        if overrides:
            data = apply_overrides(to_dict(model.config), overrides)
            model = dataclasses.replace(model, config=from_dict(Config, data, "overrides"))
        return FAMILIES.get(model.config.model.emo.family, cls)(model)

    @property
    def config(self) -> Config:
        return self.model.config

    @property
    def random_weights(self) -> bool:
        return self.model.random_seed is not None

    # ------------------------------------------------------------------ inputs

    def run_config(self, options: Options) -> Config:
        """The config with the options' sampler, steps, scales, f and n applied (validated)."""
        cfg, o = self.config, options
        diffusion_changes = {
            "num_inference_steps": o.steps,
            "sampler": o.sampler,
            "guidance_scale": o.guidance_scale,
            "audio_guidance_scale": o.audio_guidance_scale,
            "eta": o.eta,
        }
        diffusion = dataclasses.replace(
            cfg.diffusion, **{k: v for k, v in diffusion_changes.items() if v is not None}
        )
        emo = dataclasses.replace(
            cfg.model.emo,
            n_frames=cfg.model.emo.n_frames if o.clip_frames is None else o.clip_frames,
            n_motion_frames=(
                cfg.model.emo.n_motion_frames if o.motion_frames is None else o.motion_frames
            ),
        )
        f, n = emo.n_frames, emo.n_motion_frames
        if diffusion.num_inference_steps < 1 or f < 1 or n < 1:
            raise InputError("steps, clip frames and motion frames must be at least 1")
        if emo.use_temporal and n > f:
            raise InputError(f"motion frames n={n} cannot exceed the clip length f={f}")
        if emo.use_temporal and n + f > emo.temporal.motion_max_seq_length:
            raise InputError(
                f"motion frames + clip frames = {n + f} exceed the temporal modules' "
                f"positions (model.emo.temporal.motion_max_seq_length = "
                f"{emo.temporal.motion_max_seq_length})"
            )
        model = dataclasses.replace(cfg.model, emo=emo)
        return dataclasses.replace(cfg, model=model, diffusion=diffusion)

    def resolution(self, options: Options) -> int:
        """The square side in pixels: the option, or the UNet's sample size in pixels."""
        model = self.config.model
        factor = model.vae.factor
        side = options.resolution
        if side is None:
            side = (model.unet.sample_size or 64) * factor
        step = factor * 2 ** (len(model.unet.block_out_channels) - 1)
        if side < step or side % step:
            raise InputError(f"resolution {side}: must be a positive multiple of {step} pixels")
        return side

    def prepare(
        self, image: Any = None, audio: Any = None, sample_rate: int | None = None, **options: Any
    ) -> Job:
        """Reads and checks every input (cheap: before any model work); see `Options`."""
        opts = Options(**options)
        if image is None or audio is None:
            raise InputError("give both an image and an audio")
        if opts.hallo_only():
            raise InputError(
                f"{', '.join(opts.hallo_only())}: options of Hallo models; this model is an EMO"
            )
        config = self.run_config(opts)
        mesh = self.mesh(config, opts, Guidance.from_config(config.diffusion).num_passes)
        speed = opts.speed  # a curve file is read first: it is quick to check
        if isinstance(speed, (str, Path)):
            speed = read_speed_curve(speed)
        audio_cfg = config.model.audio
        reference, wave, name, fps = self.read_inputs(config, opts, image, audio, sample_rate)
        features = AudioFeatures(audio_cfg)
        normalised = features.prepare(wave, name)
        speed = speed_per_frame(speed, features.num_frames(normalised), audio_cfg.fps)
        return Job(config, opts, reference, wave, normalised, features, speed, fps, mesh)

    def read_inputs(
        self, config: Config, opts: Options, image: Any, audio: Any, sample_rate: int | None
    ) -> tuple[Reference, np.ndarray, str, int]:
        """The portrait cropped around its face (a notice warned) and the raw audio at the
        model's rate: (reference, waveform, its name, the video's frame rate)."""
        audio_cfg = config.model.audio
        fps = round(audio_cfg.fps)
        if fps != audio_cfg.fps:
            raise InputError(f"model.audio.fps {audio_cfg.fps}: video needs a whole frame rate")
        reference = prepare_reference(
            image,
            self.resolution(opts),
            opts.crop_scale or config.data.crop_scale,
            opts.face_expand,
            opts.mask,
            config.data.detector,
            opts.face,
        )
        if reference.notice:
            warnings.warn(reference.notice, stacklevel=3)
        wave, name = read_audio(audio, sample_rate, audio_cfg.sample_rate)
        return reference, wave, name, fps

    def mesh(self, config: Config, options: Options, rows: int) -> Mesh | None:
        """The devices a clip of `rows` guided rows is split over (checked: exit 2 if wrong)."""
        devices = options.devices or config.parallel.generate_devices
        return generation_mesh(devices, rows, config.model.emo.n_frames)

    # ------------------------------------------------------------------ generation

    def functions(self, job: Job) -> VideoFunctions:
        return video_functions(job.config.model, job.config.diffusion, job.mesh)

    def placed(self, job: Any) -> tuple[Any, Any, Any]:
        """The job's functions, and the model's (emo, vae) params placed on its devices."""
        fns = self.functions(job)
        params = fns.place(self.model.params)
        return fns, params["emo"], params["vae"]

    def iter_clips(self, job: Job, progress: ProgressFn | None = None) -> Iterator[Clip]:
        """Generates the clips of `job` in order (see the module doc)."""
        fns, emo, vae = self.placed(job)
        f, n = job.clip_frames, job.config.model.emo.n_motion_frames
        temporal = job.config.model.emo.use_temporal
        clips, total = job.num_clips, job.num_frames
        pad = clips * f - total
        speed = np.concatenate([job.speed, np.repeat(job.speed[-1:], pad)])
        guidance = job.guidance
        mask = jnp.asarray(job.reference.mask[None])
        ref_latent = fns.encode(vae, jnp.asarray(job.reference.image[None]))
        base = fns.reference(emo, ref_latent)
        seed_key = jax.random.key(job.options.seed)
        motion_frames = motion_latents = None
        for k, audio in enumerate(job.clip_audio()):
            features = base
            if temporal and motion_frames is not None:
                motion_latents = jnp.stack(
                    [fns.encode(vae, jnp.asarray(fr[None]))[0] for fr in motion_frames]
                )[None]  # (1, n, h, w, 4)
                features = {**base, "motion": fns.motion(emo, ref_latent, motion_latents)}
            with reporting(fns, progress, k, clips):
                sample = fns.sample if progress is None else fns.sample_reporting
                latents = sample(
                    emo,
                    features,
                    jnp.asarray(audio),
                    mask,
                    jnp.asarray(speed[k * f : (k + 1) * f][None]),
                    jax.random.fold_in(seed_key, k),
                    guidance,
                )
                latents = jax.block_until_ready(latents)
            frames = self._decode(fns, vae, latents[0], job.options.decode_chunk)
            valid = min(f, total - k * f)
            yield Clip(
                k,
                frames[:valid],
                motion_frames,
                None if motion_latents is None else np.asarray(motion_latents),
            )
            motion_frames = frames[-n:] if temporal else None

    def autoencode(self, job: Job, frames: np.ndarray) -> np.ndarray:
        """(T, R, R, 3) uint8 frames through the model's autoencoder (encode -> decode, as the
        reference and motion frames are): what its latent space keeps, a ceiling for any video
        the model generates."""
        fns = self.functions(job)
        vae = self.model.params["vae"]
        latents = jnp.concatenate([fns.encode(vae, jnp.asarray(fr[None])) for fr in frames])
        return self._decode(fns, vae, latents, job.options.decode_chunk)

    @staticmethod
    def _decode(fns: Any, vae: Any, latents: jax.Array, chunk: int) -> np.ndarray:
        """(F, h, w, C) -> `fns.decode`'s (F, R, R, 3) frames (EMO: uint8; Hallo: float in
        [-1, 1]), `chunk` frames per call (a multiple of the devices; last chunk padded)."""
        f = latents.shape[0]
        chunk = fns.frames_per_call(max(1, min(chunk, f)))
        pad = -f % chunk
        z = jnp.concatenate([latents, jnp.zeros((pad, *latents.shape[1:]), latents.dtype)])
        parts = [np.asarray(fns.decode(vae, z[i : i + chunk])) for i in range(0, f + pad, chunk)]
        return np.concatenate(parts)[:f]

    def __call__(
        self,
        image: Any = None,
        audio: Any = None,
        sample_rate: int | None = None,
        *,
        out: str | Path | None = None,
        frames_dir: str | Path | None = None,
        return_frames: bool = True,
        progress: ProgressFn | None = None,
        **options: Any,
    ) -> EMOOutput:
        """Generates the video of `image` (path, PIL image or uint8 array) speaking `audio`
        (path, or a waveform with `sample_rate`, or (waveform, rate)): `prepare` + `generate`.
        `options` are `Options` fields."""
        job = self.prepare(image, audio, sample_rate, **options)
        return self.generate(job, out, frames_dir, return_frames, progress)

    def generate(
        self,
        job: Job,
        out: str | Path | None = None,
        frames_dir: str | Path | None = None,
        return_frames: bool = True,
        progress: ProgressFn | None = None,
    ) -> EMOOutput:
        """Runs a prepared job. Writes an H.264 mp4 with the audio to `out` and PNG frames
        000000.png, ... to `frames_dir` (new or empty) if given, each whole or not at all;
        returns the frames if asked."""
        check_outputs(out, frames_dir)
        start = time.perf_counter()
        kept, count = [], 0
        with contextlib.ExitStack() as outputs:  # on leaving: the mp4, then the frames in place
            png_dir = (
                None if frames_dir is None else outputs.enter_context(atomic_folder(frames_dir))
            )
            writer = None
            if out is not None:
                rate = job.config.model.audio.sample_rate
                writer = VideoWriter(out, job.fps, job.wave, rate, preset="medium")
                outputs.enter_context(writer)
            for clip in self.iter_clips(job, progress):
                if writer is not None:
                    writer.write(clip.frames)
                for frame in clip.frames if png_dir is not None else ():
                    Image.fromarray(frame).save(png_dir / f"{count:06d}.png")
                    count += 1
                if return_frames:
                    kept.append(clip.frames)
                pause_point("sample")  # (after a clip: its frames are in the partial outputs)
            pause_point("write")
        return EMOOutput(
            frames=np.concatenate(kept) if return_frames else None,
            num_frames=job.num_frames,
            fps=job.fps,
            audio=job.wave,
            sample_rate=job.config.model.audio.sample_rate,
            reference=job.reference,
            path=None if out is None else Path(out),
            frames_dir=None if frames_dir is None else Path(frames_dir),
            seconds=time.perf_counter() - start,
        )


# model.emo.family -> its pipeline class (emo_jax.pipeline.hallo adds "hallo").
FAMILIES: dict[str, type[EMOPipeline]] = {"emo": EMOPipeline}


def check_outputs(out: str | Path | None, frames_dir: str | Path | None) -> None:
    """InputError, before any work, if the mp4 or the frames folder (new or empty) cannot be
    written."""
    if out is not None:
        check_output(out)
    if frames_dir is not None and any(check_output(frames_dir, folder=True).glob("*")):
        raise InputError(f"{frames_dir}: the frames folder exists and is not empty")
