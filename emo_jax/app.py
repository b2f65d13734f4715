"""`emo-jax app`: a Gradio page over one `EMOPipeline` (portrait + audio -> video with sound).

One model per process, loaded at start; one video at a time (the queue runs one request and
holds the rest). The page makes no outside network calls: analytics and the version check are
off, the theme's fonts are served by the app itself, and nothing is shared.
"""

from __future__ import annotations

import atexit
import contextvars
import html
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # read by gradio (and its client) at import

import gradio as gr  # noqa: E402

from emo_jax.commands.generate import ASSETS, EXAMPLE_AUDIO, EXAMPLE_IMAGE  # noqa: E402
from emo_jax.config import SAMPLERS  # noqa: E402
from emo_jax.errors import InputError  # noqa: E402
from emo_jax.faces.detect import MASK_OPTION  # noqa: E402
from emo_jax.pipeline import EMOPipeline, Options  # noqa: E402

SPEED_MAX = 1.5  # degrees per frame: above it the paper's motion gets jittery
API_NAME = "generate"
IMAGE_FILE = dict(type="filepath", image_mode=None, format="png")  # uploads as they are


def _resolution_step(pipe: EMOPipeline, default: int) -> int:
    """The smallest resolution the pipeline accepts (every valid one is a multiple of it)."""
    for side in range(1, default + 1):
        try:
            return pipe.resolution(Options(resolution=side))
        except InputError:
            continue
    return default


def _friendly(message: str, uploads: dict[str, str]) -> str:
    """The message in the page's words: each uploaded file's temporary path replaced by its
    label and name, the command line's options by the page's fields."""
    for path, label in uploads.items():
        message = message.replace(path, f"{label} '{Path(path).name}'")
    return message.replace("--face", "Face").replace(MASK_OPTION, "a Mask under Face")


def _header(pipe: EMOPipeline) -> str:
    if pipe.random_weights:
        note = (
            "**Model: RANDOM weights: the video is noise** (it shows that the pipeline runs, "
            "not what EMO does). Start the app with `--checkpoint FOLDER` for a trained model."
        )
    elif pipe.model.card:
        note = (
            f"Model: the built-in default, {pipe.model.card['name']} (trained on drawn faces: "
            "on a photograph it runs, but quality needs real training data and weights)."
        )
    else:
        note = f"Model: `{pipe.model.source}`."
    return (
        "# EMO: portrait + voice -> talking-head video\n"
        "Upload a portrait (a frontal face) and a speech or song (any format, any length), or "
        "pick the example below, then press **Generate**. The video is made clip after clip; "
        "the first video of each size and clip length compiles the model first (a minute or "
        f"more).\n\n{note}"
    )


def make_generate(pipe: EMOPipeline, out_dir: Path) -> Callable[..., tuple[str, str]]:
    """The request handler: inputs -> (mp4 path, summary); bad input raises gr.Error."""
    count = 0

    def generate(
        image: str | None,
        audio: str | None,
        steps: float,
        sampler: str,
        guidance_scale: float,
        audio_guidance_scale: float,
        speed: float,
        seed: float,
        clip_frames: float,
        resolution: float,
        mask: str | None = None,
        face: float | None = None,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 (gradio finds it by its default)
    ) -> tuple[str, str]:
        nonlocal count
        if image is None or audio is None:
            missing = [n for n, v in (("a portrait", image), ("an audio file", audio)) if not v]
            message = f"Upload {' and '.join(missing)}, or pick the example."
            raise gr.Error(message, title="Missing input", print_exception=False)
        uploads = {str(image): "portrait", str(audio): "audio"}
        if mask is not None:
            uploads[str(mask)] = "mask"
        context = contextvars.copy_context()  # the steps report from a JAX callback thread

        def on_step(clip: int, clips: int, step: int, per_clip: int) -> None:
            desc = f"clip {clip + 1}/{clips}, step {step}/{per_clip}"
            done, total = clip * per_clip + step, clips * per_clip
            context.run(progress, (done, total), desc=desc, unit="steps")

        for old in out_dir.glob("*.mp4"):  # the last request's video, already served
            old.unlink()
        count += 1
        out = out_dir / f"emo_{count:04d}.mp4"
        try:
            progress(0, desc="reading the inputs")
            job = pipe.prepare(
                image,
                audio,
                steps=int(steps),
                sampler=sampler,
                guidance_scale=float(guidance_scale),
                audio_guidance_scale=float(audio_guidance_scale) or None,
                speed=float(speed),
                seed=int(seed),
                clip_frames=int(clip_frames),
                resolution=int(resolution),
                mask=mask,
                face=None if face is None else int(face),
            )
            progress(0, desc=f"clip 1/{job.num_clips}: starting (may compile the model)")
            result = pipe.generate(job, out, return_frames=False, progress=on_step)
        except InputError as e:
            message = html.escape(_friendly(str(e), uploads), quote=False)
            raise gr.Error(message, duration=None, title="Bad input", print_exception=False) from e
        seconds = result.num_frames / result.fps
        summary = (
            f"{result.num_frames} frames ({seconds:.2f} s at {result.fps} fps) in "
            f"{job.num_clips} clips, {result.reference.image.shape[0]} px, "
            f"made in {result.seconds:.1f} s."
        )
        if job.reference.notice:  # e.g. several faces: the largest was used
            summary += " " + _friendly(job.reference.notice, uploads)
        return str(result.path), summary

    return generate


def build_app(pipe: EMOPipeline, out_dir: Path) -> gr.Blocks:
    """The page: the inputs, the Generate button and the options on the left, the video on the
    right. Element ids: portrait, audio, generate, video, summary, steps, sampler, guidance,
    audio-guidance, speed, seed, clip-frames, resolution, mask, face."""
    cfg = pipe.config
    emo, diffusion = cfg.model.emo, cfg.diffusion
    default_side = pipe.resolution(Options())
    side_step = _resolution_step(pipe, default_side)
    max_frames = emo.temporal.motion_max_seq_length - emo.n_motion_frames
    with gr.Blocks(title="EMO (JAX)", analytics_enabled=False, delete_cache=(3600, 3600)) as app:
        gr.Markdown(_header(pipe))
        with gr.Row():
            with gr.Column(scale=3):
                with gr.Row():
                    image = gr.Image(
                        label="Portrait",
                        sources=["upload", "clipboard"],
                        height=240,
                        elem_id="portrait",
                        **IMAGE_FILE,
                    )
                    audio = gr.Audio(
                        type="filepath",
                        sources=["upload", "microphone"],
                        label="Audio",
                        elem_id="audio",
                    )
                gr.Examples([[str(EXAMPLE_IMAGE), str(EXAMPLE_AUDIO)]], [image, audio])
                run = gr.Button("Generate", variant="primary", elem_id="generate")
                with gr.Accordion("Options", open=True):
                    with gr.Row():
                        steps = gr.Slider(
                            1,
                            100,
                            diffusion.num_inference_steps,
                            step=1,
                            label="Steps",
                            elem_id="steps",
                        )
                        sampler = gr.Radio(
                            list(SAMPLERS),
                            value=diffusion.sampler,
                            label="Sampler",
                            elem_id="sampler",
                        )
                    with gr.Row():
                        guidance = gr.Slider(
                            1.0,
                            10.0,
                            diffusion.guidance_scale,
                            step=0.1,
                            label="Guidance scale",
                            elem_id="guidance",
                        )
                        audio_guidance = gr.Slider(
                            0.0,
                            10.0,
                            diffusion.audio_guidance_scale or 0.0,
                            step=0.1,
                            label="Audio guidance scale",
                            elem_id="audio-guidance",
                            info="0: one scale for reference and audio; above 0: the guidance "
                            "scale is the reference's, this one the audio's.",
                        )
                    with gr.Row():
                        speed = gr.Slider(
                            0.0,
                            SPEED_MAX,
                            Options().speed,
                            step=0.05,
                            label="Head speed",
                            elem_id="speed",
                            info="Degrees of head rotation per frame: speech 0.1-1.0, "
                            "singing 1.0-1.3.",
                        )
                        seed = gr.Number(
                            0,
                            precision=0,
                            label="Seed",
                            info="Same seed, same video.",
                            elem_id="seed",
                        )
                    with gr.Row():
                        clip_frames = gr.Slider(
                            1,
                            max(emo.n_frames, max_frames),
                            emo.n_frames,
                            step=1,
                            label="Clip length (frames)",
                            elem_id="clip-frames",
                            info=f"At least the {emo.n_motion_frames} motion frames carried from "
                            "one clip to the next.",
                        )
                        resolution = gr.Slider(
                            side_step,
                            max(2 * default_side, 4 * side_step),
                            default_side,
                            step=side_step,
                            label="Resolution (px)",
                            elem_id="resolution",
                            info="The side of the square video.",
                        )
                with gr.Accordion("Face (optional)", open=False):
                    face = gr.Number(
                        None,
                        precision=0,
                        minimum=0,
                        label="Face",
                        info="With several faces in the portrait: 0 the largest, 1 the next, "
                        "...; empty: the largest.",
                        elem_id="face",
                    )
                    mask = gr.Image(
                        sources=["upload"],
                        label="Mask",
                        elem_id="mask",
                        placeholder="The portrait's size, white where the face may move; "
                        "needed when no face is found.",
                        height=200,
                        **IMAGE_FILE,
                    )
            with gr.Column(scale=2):
                video = gr.Video(label="Video", interactive=False, height=360, elem_id="video")
                summary = gr.Markdown(elem_id="summary")
        options = [steps, sampler, guidance, audio_guidance, speed, seed, clip_frames, resolution]
        run.click(
            make_generate(pipe, out_dir),
            [image, audio, *options, mask, face],
            [video, summary],
            api_name=API_NAME,
            concurrency_limit=1,
        )
    return app


def launch(
    pipe: EMOPipeline, host: str = "127.0.0.1", port: int = 7860, block: bool = True
) -> gr.Blocks:
    """Serves the page at http://host:port (blocking, or in the background with block=False;
    stop it with `.close()`)."""
    pipe.model.params  # noqa: B018 (make or load the weights now, not in the first request)
    out_dir = Path(tempfile.mkdtemp(prefix="emo_jax_app_"))
    atexit.register(shutil.rmtree, out_dir, ignore_errors=True)
    app = build_app(pipe, out_dir)
    app.queue(default_concurrency_limit=1)
    app.launch(
        server_name=host,
        server_port=port,
        share=False,
        show_error=True,
        quiet=not block,
        allowed_paths=[str(ASSETS)],
        ssr_mode=False,
        pwa=False,
        mcp_server=False,
        prevent_thread_lock=not block,
    )
    return app


def serve(
    checkpoint: str | None, config: str | None, overrides: list[str], host: str, port: int
) -> None:
    """Loads the model once and serves the page until interrupted."""
    launch(EMOPipeline.from_pretrained(checkpoint, config, overrides), host, port)
