# ruff: noqa: E501 (the table: one case a line)
"""Every bad input a command can get, in one table: the command line, the one error line it must
print and its exit code; nothing may be written. The CLI runs in this process (no model is
loaded for any of them: each is refused before the work starts).

docs/bad_inputs.md is this table as markdown: `python tests/test_bad_inputs.py` rewrites it,
and `test_the_doc_is_the_table` fails when it is stale.
"""

import shlex
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from emo_jax.cli import main

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "emo_jax" / "assets"
DOC = ROOT / "docs" / "bad_inputs.md"
FFMPEG_INVALID = "FFmpeg: Invalid data found when processing input"

# Placeholders in the command lines: name -> what it is (made fresh for each case in tmp).
FILES = {
    "tmp": "a folder that does not exist yet (outputs go here)",
    "image": "a portrait photograph (256x256 px, emo_jax/assets/portrait.png)",
    "audio": "a spoken sentence (emo_jax/assets/speech.wav)",
    "dir": "an empty folder",
    "full": "a folder holding a file",
    "text": "a text file",
    "empty": "a 0-byte file",
    "text_png": "a text file named .png",
    "tiny_png": "an 8x8 px image",
    "noise_png": "a 160x96 px image of noise (no face)",
    "small_mask": "a 30x20 px white mask",
    "text_wav": "a text file named .wav",
    "speed_words": "a speed curve whose second line is a word",
    "speed_nan": "a speed curve whose first value is nan",
    "bad_yaml": "a file that is not YAML",
    "unknown_yaml": "a YAML config with an unknown key",
    "no_videos": "a folder with no video file",
    "bad_videos": "a folder whose only .mp4 is text",
    "ro": "a place nobody may write (/sys)",
    "model_yaml": "the built-in model's config (emo_jax/assets/default_model/config.yaml)",
}

G = "generate --out {tmp}/v.mp4"  # a valid generate line (the examples as inputs)
E = "evaluate --data {dir}"
# (command line, message after "emo-jax COMMAND: error: ", exit code)
# fmt: off
CASES = [
    # generate: numbers
    (f"{G} --guidance nan", "argument --guidance: nan is not a finite number", 2),
    (f"{G} --guidance inf", "argument --guidance: inf is not a finite number", 2),
    (f"{G} --guidance -1", "argument --guidance: -1: must be at least 0", 2),
    (f"{G} --guidance x", "argument --guidance: 'x' is not a number", 2),
    (f"{G} --audio-guidance nan", "argument --audio-guidance: nan is not a finite number", 2),
    (f"{G} --audio-guidance=-inf", "argument --audio-guidance: -inf is not a finite number", 2),
    (f"{G} --audio-guidance -2", "argument --audio-guidance: -2: must be at least 0", 2),
    (f"{G} --speed nan", "argument --speed: nan is not a finite number", 2),
    (f"{G} --speed inf", "argument --speed: inf is not a finite number", 2),
    (f"{G} --speed -0.5", "argument --speed: -0.5: must be at least 0", 2),
    (f"{G} --steps 0", "argument --steps: 0: must be at least 1", 2),
    (f"{G} --steps -3", "argument --steps: -3: must be at least 1", 2),
    (f"{G} --steps 2.5", "argument --steps: '2.5' is not a whole number", 2),
    (f"{G} --steps nan", "argument --steps: 'nan' is not a whole number", 2),
    (f"{G} --clip-frames 0", "argument --clip-frames: 0: must be at least 1", 2),
    (f"{G} --clip-frames -1", "argument --clip-frames: -1: must be at least 1", 2),
    (f"{G} --motion-frames 0", "argument --motion-frames: 0: must be at least 1", 2),
    (f"{G} --resolution 0", "argument --resolution: 0: must be at least 1", 2),
    (f"{G} --resolution -64", "argument --resolution: -64: must be at least 1", 2),
    (f"{G} --resolution 50", "resolution 50: must be a positive multiple of 32 pixels", 2),
    (f"{G} --seed -1", "argument --seed: -1: must be at least 0", 2),
    (f"{G} --seed 4294967296", "argument --seed: 4294967296: must be at most 4294967295", 2),
    (f"{G} --sampler euler", "argument --sampler: invalid choice: 'euler' (choose from 'ddim', 'dpmpp_2m')", 2),
    (f"{G} --face -1", "argument --face: -1: must be at least 0", 2),
    (f"{G} --face nan", "argument --face: 'nan' is not a whole number", 2),
    (f"{G} --devices 0", "argument --devices: 0: must be at least 1", 2),
    (f"{G} --devices 64", "devices: 64 asked for, 1 cpu device(s) available", 2),
    (f"{G} --clip-frames 40", "motion frames + clip frames = 42 exceed the temporal modules' positions (model.emo.temporal.motion_max_seq_length = 16)", 2),
    (f"{G} --motion-frames 9", "motion frames n=9 cannot exceed the clip length f=8", 2),
    # generate: outputs
    ("generate --out {dir}", "{dir}: is a folder; give a file name", 2),
    ("generate --out {text}/v.mp4", "{text}/v.mp4: {text} is a file, not a folder", 2),
    ("generate --out {ro}/v.mp4", "{ro}/v.mp4: cannot write in {ro} (Permission denied)", 2),
    (f"{G} --frames-dir {{text}}", "{text}: is a file, not a folder", 2),
    (f"{G} --frames-dir {{full}}", "{full}: the frames folder exists and is not empty", 2),
    (f"{G} --frames-dir {{ro}}/f", "{ro}/f: cannot write in {ro} (Permission denied)", 2),
    ("generate", "the following arguments are required: --out", 2),
    # generate: inputs
    (f"{G} --image {{tmp}}/nope.png", "{tmp}/nope.png: image file not found", 2),
    (f"{G} --image {{dir}}", "{dir}: is a folder, not an image file", 2),
    (f"{G} --image {{empty}}", "{empty}: empty file (0 bytes)", 2),
    (f"{G} --image {{text_png}}", "{text_png}: not a readable image (unknown format)", 2),
    (f"{G} --image {{tiny_png}}", "{tiny_png}: the image is too small (8x8 px)", 2),
    (f"{G} --image {{noise_png}}", "{noise_png}: no face found in the portrait (use a photo with the face frontal or three-quarter and at least 1/10 of the image, or give the face region with --mask FILE / mask=...)", 2),
    (f"{G} --audio {{tmp}}/nope.wav", "{tmp}/nope.wav: audio file not found", 2),
    (f"{G} --audio {{dir}}", "{dir}: is a folder, not an audio file", 2),
    (f"{G} --audio {{empty}}", "{empty}: empty file (0 bytes)", 2),
    (f"{G} --audio {{text_wav}}", f"{{text_wav}}: not an audio file ({FFMPEG_INVALID})", 2),
    (f"{G} --image {{image}} --mask {{tmp}}/m.png", "{tmp}/m.png: mask file not found", 2),
    (f"{G} --image {{image}} --mask {{small_mask}}", "{small_mask}: the mask is 30x20 px, the portrait 256x256; they must match", 2),
    (f"{G} --speed {{tmp}}/speed.txt", "{tmp}/speed.txt: speed curve file not found", 2),
    (f"{G} --speed {{speed_words}}", "{speed_words}:2: 'fast' is not a number (one speed per line)", 2),
    (f"{G} --speed {{speed_nan}}", "{speed_nan}:1: nan: speeds are finite numbers >= 0", 2),
    (f"{G} --speed {{empty}}", "{empty}: empty file (0 bytes)", 2),
    (f"{G} --checkpoint {{tmp}}/model", "{tmp}/model: checkpoint not found", 2),
    (f"{G} --checkpoint {{text}}", "{text}: is a file, not a checkpoint", 2),
    (f"{G} --checkpoint {{dir}}", "{dir}: not a model bundle (config.yaml + params/) or exported model (emo_index.json)", 2),
    (f"{G} --config {{tmp}}/c.yaml", "{tmp}/c.yaml: config file not found", 2),
    (f"{G} --config {{bad_yaml}}", "{bad_yaml}: not valid YAML (while parsing a flow node)", 2),
    (f"{G} --config {{unknown_yaml}}", "{unknown_yaml}.model: unknown key(s) nope (known: attention, audio, dtype, emo, hallo, unet, vae)", 2),
    (f"{G} model.nope=1", "overrides.model: unknown key(s) nope (known: attention, audio, dtype, emo, hallo, unet, vae)", 2),
    (f"{G} diffusion.sampler=euler", "diffusion.sampler: 'euler' is not one of ddim, dpmpp_2m", 2),
    (f"{G} --bogus", "unrecognized arguments: --bogus", 2),
    # evaluate
    (f"{E} --clips 0", "argument --clips: 0: must be at least 1", 2),
    (f"{E} --seconds 0", "argument --seconds: 0: must be positive", 2),
    (f"{E} --seconds nan", "argument --seconds: nan is not a finite number", 2),
    (f"{E} --seconds=-1", "argument --seconds: -1: must be positive", 2),
    (f"{E} --resolution 0", "argument --resolution: 0: must be at least 1", 2),
    (f"{E} --guidance inf", "argument --guidance: inf is not a finite number", 2),
    (f"{E} --steps 0", "argument --steps: 0: must be at least 1", 2),
    ("evaluate --data {tmp}/corpus", "{tmp}/corpus: corpus folder not found", 2),
    ("evaluate --data {text}", "{text}: is a file, not a corpus folder", 2),
    ("evaluate --data {dir}", "{dir}: no corpus clips (<name>.json + <name>.mp4; emo-jax synth)", 2),
    (f"{E} --out {{full}}", "{full}: is a folder; give a file name", 2),
    (f"{E} --out {{ro}}/r.json", "{ro}/r.json: cannot write in {ro} (Permission denied)", 2),
    # preprocess
    ("preprocess --videos {full} --out {tmp}/p --resolution 0", "argument --resolution: 0: must be at least 16", 2),
    ("preprocess --videos {full} --out {tmp}/p --resolution nan", "argument --resolution: 'nan' is not a whole number", 2),
    ("preprocess --videos {full} --out {tmp}/p --workers 0", "argument --workers: 0: must be at least 1", 2),
    ("preprocess --videos {full} --out {tmp}/p --workers -2", "argument --workers: -2: must be at least 1", 2),
    ("preprocess --videos {tmp}/v --out {tmp}/p", "{tmp}/v: videos folder not found", 2),
    ("preprocess --videos {text} --out {tmp}/p", "{text}: is a file, not a videos folder", 2),
    ("preprocess --videos {full} --out {text}", "{text}: is a file, not a folder", 2),
    ("preprocess --videos {full} --out {ro}/p", "{ro}/p: cannot write in {ro} (Permission denied)", 2),
    ("preprocess --videos {no_videos} --out {tmp}/p", "{no_videos}: no video files (.mp4, .mov, .mkv, .avi, .webm, .m4v, .mpg, .mpeg, .flv)", 2),
    ("preprocess --videos {bad_videos} --out {tmp}/p --config {model_yaml}", "{bad_videos}: none of the 1 videos is usable (each skipped one is named above with the reason)", 2),
    ("preprocess --videos {bad_videos} --out {tmp}/p", "model.audio.wav2vec2_path: not set (a transformers wav2vec2 folder, e.g. facebook/wav2vec2-base-960h; or model.audio.encoder=mel needs no weights)", 2),
    ("preprocess --videos {bad_videos} --out {tmp}/p model.audio.wav2vec2_path={tmp}/w", "{tmp}/w: model.audio.wav2vec2_path not found", 2),
    ("preprocess --videos {full} --out {tmp}/p data.crop_scale=x", "config.data.crop_scale: expected a number, got 'x'", 2),
    # synth
    ("synth --out {tmp}/c --identities 0", "argument --identities: 0: must be at least 1", 2),
    ("synth --out {tmp}/c --seconds 0", "argument --seconds: 0: must be positive", 2),
    ("synth --out {tmp}/c --seconds nan", "argument --seconds: nan is not a finite number", 2),
    ("synth --out {tmp}/c --seconds inf", "argument --seconds: inf is not a finite number", 2),
    ("synth --out {tmp}/c --seconds=-1", "argument --seconds: -1: must be positive", 2),
    ("synth --out {tmp}/c --clips 0", "argument --clips: 0: must be at least 1", 2),
    ("synth --out {tmp}/c --size 0", "argument --size: 0: must be at least 32", 2),
    ("synth --out {tmp}/c --size 33", "--size 33: must be even and at least 32", 2),
    ("synth --out {tmp}/c --seed -1", "argument --seed: -1: must be at least 0", 2),
    ("synth --out {tmp}/c --workers 0", "argument --workers: 0: must be at least 1", 2),
    ("synth --out {tmp}/c --audio beeps", "unknown audio source 'beeps' (known: espeak, syllables)", 2),
    ("synth --out {text}", "{text}: is a file, not a folder", 2),
    ("synth --out {ro}/c", "{ro}/c: cannot write in {ro} (Permission denied)", 2),
    ("synth --out {tmp}/c x.y=1", "takes no config overrides: x.y=1", 2),
    # train
    ("train --config {tmp}/c.yaml", "{tmp}/c.yaml: config file not found", 2),
    ("train --config {dir}", "{dir}: is a folder, not a config file", 2),
    ("train --config {empty}", "{empty}: empty file (0 bytes)", 2),
    ("train --config {dir} --num-processes 0", "argument --num-processes: 0: must be at least 1", 2),
    ("train --config {dir} --num-processes nan", "argument --num-processes: 'nan' is not a whole number", 2),
    ("train --config {dir} --stage 4", "argument --stage: 4: must be at most 3", 2),
    ("train --config {dir} --stage -1", "argument --stage: -1: must be at least 0", 2),
    ("train --config {dir} --process-id -1", "argument --process-id: -1: must be at least 0", 2),
    # convert
    ("convert --src {tmp}/w --dst {tmp}/o", "{tmp}/w: source not found", 2),
    ("convert --src {full} --dst {full}", "{full}: already exists (use --overwrite to replace it)", 2),
    ("convert --src {full} --dst {text}/o", "{text}/o: {text} is a file, not a folder", 2),
    ("convert --src {full} --dst {ro}/o", "{ro}/o: cannot write in {ro} (Permission denied)", 2),
    ("convert --src {full} --dst {tmp}/o --config {tmp}/c.yaml", "{tmp}/c.yaml: config file not found", 2),
    ("convert --src {full} --dst {tmp}/o --src-format onnx", "argument --src-format: invalid choice: 'onnx' (choose from 'diffusers', 'transformers', 'sd-single-file', 'animatediff', 'orbax', 'export', 'hallo')", 2),
    # audio-features
    ("audio-features {tmp}/a.wav --out {tmp}/a.npy", "{tmp}/a.wav: audio file or folder not found", 2),
    ("audio-features {audio} --out {tmp}/a.txt", "{tmp}/a.txt: --out must end in .npy for one audio file", 2),
    ("audio-features {audio} --out {dir}", "{dir}: is a folder; give a file name", 2),
    ("audio-features {audio} --out {ro}/a.npy", "{ro}/a.npy: cannot write in {ro} (Permission denied)", 2),
    ("audio-features {dir} --out {text}", "{text}: is a file, not a folder", 2),
    ("audio-features {empty} --out {tmp}/a.npy", "{empty}: empty file (0 bytes)", 2),
    ("audio-features {text_wav} --out {tmp}/a.npy", f"{{text_wav}}: not an audio file ({FFMPEG_INVALID})", 2),
    ("audio-features {dir} --out {tmp}/o", "{dir}: no audio files (.wav, .flac, .mp3, .m4a, .aac, .ogg, .opus, .mp4, .mkv)", 2),
    ("audio-features {audio} --out {tmp}/a.npy --dtype int8", "argument --dtype: invalid choice: 'int8' (choose from 'float32', 'float16')", 2),
    ("audio-features {audio} --out {tmp}/a.npy model.audio.window=x", "{model_yaml}.model.audio.window: expected an integer, got 'x'", 2),
    # info, app, recipe
    ("info --config {tmp}/c.yaml", "{tmp}/c.yaml: config file not found", 2),
    ("info --model {tmp}/m", "{tmp}/m: checkpoint not found", 2),
    ("app --port 0", "argument --port: 0: must be at least 1", 2),
    ("app --port 70000", "argument --port: 70000: must be at most 65535", 2),
    ("app --config {dir}", "{dir}: is a folder, not a config file", 2),
    ("recipe {tmp}/r.yaml", "{tmp}/r.yaml: recipe file not found", 2),
]
# fmt: on


def make_files(tmp: Path) -> dict[str, str]:
    """The placeholders' files under `tmp` (see FILES)."""
    inputs = tmp / "inputs"
    inputs.mkdir()
    for name in ("dir", "full", "no_videos", "bad_videos"):
        (inputs / name).mkdir()
    (inputs / "full" / "x.txt").write_text("x\n")
    (inputs / "no_videos" / "x.txt").write_text("x\n")
    (inputs / "bad_videos" / "notes.mp4").write_text("not a video\n")
    (inputs / "text").write_text("some text\n")
    (inputs / "empty").write_bytes(b"")
    (inputs / "text.png").write_text("not an image\n")
    (inputs / "text.wav").write_text("not audio at all, just some text\n" * 10)
    (inputs / "speed.txt").write_text("0.5\nfast\n")
    (inputs / "speed_nan.txt").write_text("nan\n0.5\n")
    (inputs / "bad.yaml").write_text("model: [1,\n")
    (inputs / "unknown.yaml").write_text("model:\n  nope: 1\n")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(inputs / "tiny.png")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (96, 160, 3), np.uint8)).save(inputs / "noise.png")
    Image.fromarray(np.full((20, 30), 255, np.uint8)).save(inputs / "small_mask.png")
    paths = {
        "tmp": tmp / "out",
        "image": ASSETS / "portrait.png",
        "audio": ASSETS / "speech.wav",
        "text_png": inputs / "text.png",
        "tiny_png": inputs / "tiny.png",
        "noise_png": inputs / "noise.png",
        "small_mask": inputs / "small_mask.png",
        "text_wav": inputs / "text.wav",
        "speed_words": inputs / "speed.txt",
        "speed_nan": inputs / "speed_nan.txt",
        "bad_yaml": inputs / "bad.yaml",
        "unknown_yaml": inputs / "unknown.yaml",
        "ro": Path("/sys"),
        "model_yaml": ASSETS / "default_model" / "config.yaml",
    }
    names = ("dir", "full", "text", "empty", "no_videos", "bad_videos")
    paths |= {name: inputs / name for name in names}
    assert set(paths) == set(FILES)
    return {k: str(v) for k, v in paths.items()}


def tree(folder: Path) -> list[tuple[str, int]]:
    return sorted((str(p), p.stat().st_size) for p in folder.rglob("*"))


@pytest.mark.parametrize(("line", "message", "code"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, line, message, code):
    files = make_files(tmp_path)
    argv = [word.format(**files) for word in shlex.split(line)]
    before = tree(tmp_path)
    assert main(argv) == code
    err = capsys.readouterr().err
    errors = [x for x in err.splitlines() if x.startswith(f"emo-jax {argv[0]}: error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    expected = f"emo-jax {argv[0]}: error: {message.format(**files)}"
    assert errors[0] in (expected, f"{expected} (usage: emo-jax {argv[0]} --help)"), err
    assert tree(tmp_path) == before  # nothing written (and no temporary file left)


def markdown() -> str:
    """The table as docs/bad_inputs.md."""
    rows = [
        "# Bad inputs",
        "",
        "What each command prints (on stderr, one line: `emo-jax COMMAND: error: MESSAGE`) and",
        "the exit code it returns for a bad input; nothing is written, and none of them loads a",
        "model first. Generated from tests/test_bad_inputs.py (`python tests/test_bad_inputs.py`),",
        "which runs every row. Errors in the arguments themselves end with",
        "`(usage: emo-jax COMMAND --help)`. Words in capitals stand for:",
        "",
        *[f"- `{name.upper()}`: {what}" for name, what in FILES.items()],
        "",
        "| command | message | exit code |",
        "| --- | --- | --- |",
    ]
    caps = {name: name.upper() for name in FILES}
    for line, message, code in CASES:
        command = f"emo-jax {line.format(**caps)}"
        text = message.format(**caps).replace("|", "\\|")
        rows.append(f"| `{command}` | {text} | {code} |")
    return "\n".join(rows) + "\n"


def test_the_doc_is_the_table():
    assert len(CASES) >= 60
    assert DOC.read_text() == markdown(), "stale: run python tests/test_bad_inputs.py"


if __name__ == "__main__":
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(markdown())
    print(f"{DOC}: {len(CASES)} bad inputs", file=sys.stderr)
