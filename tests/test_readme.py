"""The README runs as written: every ```bash and ```python block, and every command of its
Commands table, on tiny inputs, in a scratch repository root (a temp folder with links to the
repository's configs/, emo_jax/, tools/ and bench/; what the commands write stays there).

How a block is chosen and made tiny (the README is read here, never copied):
- each ```bash / ```python block of README.md is preceded by `<!-- test: NAME -->` (run here
  with BLOCKS[NAME]) or `<!-- skip-test: REASON -->` (needs a GPU, downloaded weights or hours);
  a block without a marker, a NAME without an entry in BLOCKS, an entry without its block, and
  a substitution whose text is no longer in its block all fail;
- BLOCKS[NAME] makes the block tiny: `replace` swaps text of the block (each must be found),
  `append` adds options to its `emo-jax SUBCOMMAND` lines (an option the line already has is
  kept as written), `files` are inputs the block names that a user has (made here by FILES),
  `needs` are blocks that make its inputs;
- generation keeps the model's steps and gets one clip of audio (SHORT), so the compiled
  sampler is the one tests/test_default_model.py compiled (JAX's persistent cache);
- bash: `pip install` is left out (the suite runs in the installed package), `emo-jax ...`
  runs in this process (`emo_jax.cli.main`, the console script's function: compiled functions
  are shared between blocks) and must exit 0, `python FILE ...` runs in a child process;
  python blocks run with `exec`.
Blocks in SLOW run with `-m slow` only (the tiny training: three stages, each compiled).
The Commands table (TABLE): each row's command with its placeholders (P, A, DIR, ...) given
tiny values; a row without an entry fails.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from emo_jax.cli import main

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
LINKED = ("configs", "emo_jax", "tools", "bench")  # the repository root, read-only in spirit
MARKER = re.compile(r"<!--\s*(test|skip-test):\s*(.+?)\s*-->")
FENCE = re.compile(r"^```(\w*)\s*$")
TRAIN_TINY = (  # 2 steps of a one-level UNet: each stage compiles and runs, checkpoints, resumes
    "train.steps=2",
    "train.checkpoint_every=2",
    "train.eval_batches=1",
    "train.sample_every=0",
    "train.log_every=1",
    "train.warmup_steps=0",
    "data.batch_size=2",
    "model.unet.block_out_channels=[16]",
    "model.unet.down_block_types=[CrossAttnDownBlock2D]",
    "model.unet.up_block_types=[CrossAttnUpBlock2D]",
    "model.unet.attention_head_dim=[4]",
    "model.unet.mid_block_type=null",
)
SHORT = "short.wav"  # 0.32 s of the shipped sentence: one clip of the built-in model (8 frames)


@dataclasses.dataclass(frozen=True)
class Tiny:
    """How a README block runs on tiny inputs (see the module doc)."""

    replace: dict[str, str] = dataclasses.field(default_factory=dict)
    append: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    files: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()


BLOCKS = {
    "setup": Tiny(append={"generate": ("--audio", SHORT)}, files=(SHORT,)),
    "generate": Tiny(
        append={"generate": ("--audio", SHORT)}, files=(SHORT, "me.jpg", "speech.mp3", "models/emo")
    ),
    "pipeline": Tiny(
        replace={'"emo_jax/assets/speech.wav"': f'"{SHORT}"'},  # every one of them
        files=(SHORT,),
    ),
    "data": Tiny(
        replace={
            "--identities 64 --seconds 10": "--identities 1 --seconds 2 --size 64",
            "--identities 16 --seconds 6": "--identities 1 --seconds 2 --size 64",
            "--resolution 128 --workers 2": "--resolution 32 --workers 1",
        }
    ),
    "loader": Tiny(replace={"data.resolution=128": "data.resolution=32"}, needs=("data",)),
    "tiny-training": Tiny(
        replace={"--identities 8 --seconds 20": "--identities 1 --seconds 2"},
        append={"train": TRAIN_TINY},
    ),
    "convert-trained": Tiny(),
    "unet": Tiny(files=("sd15/unet",)),
}


def make_me_jpg(root: Path) -> None:
    from PIL import Image

    Image.open(REPO / "emo_jax/assets/portrait.png").convert("RGB").save(root / "me.jpg")


def short_speech() -> tuple:
    """The first 0.32 s of the shipped sentence (8 frames at 25 fps) and its rate."""
    import soundfile

    wave, rate = soundfile.read(REPO / "emo_jax/assets/speech.wav", dtype="float32")
    return wave[: rate * 8 // 25], rate


def make_short_wav(root: Path) -> None:
    import soundfile

    soundfile.write(root / SHORT, *short_speech())


def make_speech_mp3(root: Path) -> None:
    """`short_speech` as an mp3."""
    import av

    wave, rate = short_speech()
    with av.open(str(root / "speech.mp3"), "w") as out:
        stream = out.add_stream("libmp3lame", rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(wave[None], format="flt", layout="mono")
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)


def make_model_folder(root: Path) -> None:
    """A model bundle where the README's example names one: the built-in model's."""
    from emo_jax.pipeline.loading import DEFAULT_MODEL

    shutil.copytree(DEFAULT_MODEL, root / "models" / "emo")


def make_unet_folder(root: Path) -> None:
    """A diffusers UNet folder of the tiny config's UNet (random weights)."""
    import jax

    from emo_jax.config import load_config
    from emo_jax.models.unet import UNet2DConditionModel, dummy_inputs

    cfg = load_config(REPO / "configs/model/tiny.yaml").model.unet
    params = UNet2DConditionModel(cfg).init(jax.random.key(0), *dummy_inputs(cfg))["params"]
    UNet2DConditionModel.save_pretrained(params, cfg, root / "sd15" / "unet")


FILES: dict[str, Callable[[Path], None]] = {
    SHORT: make_short_wav,
    "me.jpg": make_me_jpg,
    "speech.mp3": make_speech_mp3,
    "models/emo": make_model_folder,
    "sd15/unet": make_unet_folder,
}


@dataclasses.dataclass(frozen=True)
class Block:
    line: int  # of the opening fence, 1-based
    language: str
    marker: tuple[str, str] | None  # ("test", NAME) or ("skip-test", REASON)
    text: str


def readme_blocks() -> list[Block]:
    """The fenced blocks of README.md with the marker on the line before each (if any)."""
    lines, blocks, i = README.read_text().splitlines(), [], 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        marker = MARKER.fullmatch(before.strip())
        text = "\n".join(lines[i + 1 : end]) + "\n"
        blocks.append(Block(i + 1, fence[1], marker.groups() if marker else None, text))
        i = end + 1
    return blocks


CODE = [b for b in readme_blocks() if b.language in ("bash", "python")]
TESTED = {b.marker[1]: b for b in CODE if b.marker and b.marker[0] == "test"}


def test_every_block_is_run_or_skipped_with_a_reason():
    for block in readme_blocks():
        where = f"README.md:{block.line}"
        assert block.language in ("bash", "python", "text"), f"{where}: fence language {block}"
        if block.language == "text":
            continue
        assert block.marker, f"{where}: no <!-- test: NAME --> or <!-- skip-test: REASON -->"
        if block.marker[0] == "test":
            assert block.marker[1] in BLOCKS, f"{where}: add BLOCKS[{block.marker[1]!r}]"
    assert len(TESTED) == sum(b.marker is not None and b.marker[0] == "test" for b in CODE)
    assert sorted(BLOCKS) == sorted(TESTED), "BLOCKS entries without a README block"


class Workspace:
    """A scratch repository root; blocks and files made once, in order, on demand."""

    def __init__(self, root: Path):
        self.root, self.done = root, set()
        for name in LINKED:
            (root / name).symlink_to(REPO / name, target_is_directory=True)

    @contextlib.contextmanager
    def inside(self):
        before = os.getcwd()
        os.chdir(self.root)
        try:
            yield
        finally:
            os.chdir(before)

    def file(self, name: str) -> None:
        if name not in self.done:
            FILES[name](self.root)
            self.done.add(name)

    def block(self, name: str) -> None:
        if name in self.done:
            return
        tiny, block = BLOCKS[name], TESTED[name]
        for need in tiny.needs:
            self.block(need)
        for f in tiny.files:
            self.file(f)
        text = block.text
        for old, new in tiny.replace.items():
            assert old in text, f"README.md:{block.line} ({name}): {old!r} is gone; update BLOCKS"
            text = text.replace(old, new)
        with self.inside():
            if block.language == "python":
                exec(compile(text, f"README.md:{block.line}", "exec"), {"__name__": "readme"})
            else:
                for argv in commands(text):
                    self.run(argv, tiny.append, f"README.md:{block.line} ({name})")
        self.done.add(name)

    def run(self, argv: list[str], append: dict, where: str) -> None:
        if argv[:2] == ["pip", "install"]:
            return
        if argv[0] == "emo-jax":
            args, extra = argv[1:], list(append.get(argv[1], ()))
            while extra:  # an option and its value (if any) unless the line has the option
                n = 2 if len(extra) > 1 and not extra[1].startswith("--") else 1
                if extra[0] not in args:
                    args += extra[:n]
                extra = extra[n:]
            assert main(args) == 0, f"{where}: {shlex.join(argv)} failed"
        elif argv[0] == "python":
            done = subprocess.run([sys.executable, *argv[1:]], capture_output=True, text=True)
            assert done.returncode == 0, f"{where}: {shlex.join(argv)}: {done.stderr[-2000:]}"
        else:
            raise AssertionError(f"{where}: no rule to run {shlex.join(argv)}")


def commands(text: str) -> list[list[str]]:
    """A bash block -> its commands (continuations joined, comments dropped, split at &&)."""
    out = []
    for line in text.replace("\\\n", " ").splitlines():
        tokens = shlex.split(line, comments=True)
        while tokens:
            cut = tokens.index("&&") if "&&" in tokens else len(tokens)
            out.append(tokens[:cut])
            tokens = tokens[cut + 1 :]
    return out


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return Workspace(tmp_path_factory.mktemp("readme"))


SLOW = {"tiny-training"}  # three training stages, each compiled: minutes of CPU


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=[pytest.mark.slow] if n in SLOW else []) for n in BLOCKS]
)
def test_block_runs(workspace, name):
    workspace.block(name)


# The Commands table: template -> (placeholder values, tiny arguments appended, what it needs)
TABLE = {
    "emo-jax generate --image P --audio A --out V.mp4": (
        {"P": "emo_jax/assets/face.png", "A": "speech.mp3", "V.mp4": "table/v.mp4"},
        (),
        ("speech.mp3",),
    ),
    "emo-jax train --config configs/train/paper.yaml --stage N": (
        {"configs/train/paper.yaml": "configs/train/tiny.yaml", "N": "1"},
        (*TRAIN_TINY, "train.out_dir=table/run", "data.shards=data/processed"),
        ("data",),  # its corpus at 32 px
    ),
    "emo-jax convert --src S --dst D": (
        {"S": "sd15/unet", "D": "table/unet_orbax"},  # the built-in model: a README block
        (),
        ("sd15/unet",),
    ),
    "emo-jax synth --out DIR": (
        {"DIR": "table/videos"},
        ("--identities", "1", "--seconds", "2", "--size", "64", "--split", "heldout"),
        (),
    ),
    "emo-jax preprocess --videos DIR --out DIR --config C": (
        {"DIR": "table/videos", "DIR#2": "table/processed", "C": "configs/model/tiny.yaml"},
        ("--resolution", "32"),
        ("emo-jax synth --out DIR",),
    ),
    "emo-jax audio-features AUDIO --out F.npy --config C": (
        {"AUDIO": "speech.mp3", "F.npy": "table/f.npy", "C": "configs/default/model.yaml"},
        (),
        ("speech.mp3",),
    ),
    "emo-jax evaluate --checkpoint M --data D": (
        {"M": "emo_jax/assets/default_model", "D": "table/videos"},
        ("--clips", "1", "--seconds", "0.64", "--out", "table/results.json"),  # 2 clips
        ("emo-jax synth --out DIR",),
    ),
    "emo-jax app": ({}, (), ()),  # served in a child process: see test_table_command
    "emo-jax info --config C": ({"C": "configs/model/tiny.yaml"}, (), ()),
}


def table_commands() -> list[str]:
    """The first cell of each row of the README's Commands table."""
    section = README.read_text().split("\n## Commands\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `(emo-jax [^`]+)` \|", section, re.M)


def test_table_rows_have_tiny_inputs():
    assert sorted(table_commands()) == sorted(TABLE), "README Commands table vs TABLE"


def fill(template: str, values: dict[str, str]) -> list[str]:
    """The template's tokens with placeholders replaced (a repeated one: NAME, NAME#2, ...)."""
    tokens, seen = shlex.split(template), {}
    for i, token in enumerate(tokens):
        seen[token] = seen.get(token, 0) + 1
        key = token if seen[token] == 1 else f"{token}#{seen[token]}"
        tokens[i] = values.get(key, token)
    assert set(values) <= {
        t if n == 1 else f"{t}#{n}" for t, c in seen.items() for n in range(1, c + 1)
    }, f"{template}: placeholders {sorted(values)} not all in it"
    return tokens


def serve_app(workspace: Workspace) -> None:
    """`emo-jax app --port FREE` in a child process: the page answers, then Ctrl-C ends it."""
    pytest.importorskip("gradio", reason="the app extra is not installed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="0")
    args = [sys.executable, "-m", "emo_jax.cli", "app", "--port", str(port)]
    child = subprocess.Popen(args, cwd=workspace.root, env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline, page = time.monotonic() + 240, None
        while page is None and child.poll() is None and time.monotonic() < deadline:
            try:
                page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read()
            except OSError:
                time.sleep(1)
        assert page is not None, f"the app did not answer: {child.stderr.read()[-2000:]}"
        assert b"gradio" in page.lower()
    finally:
        child.send_signal(signal.SIGINT)
        try:
            child.wait(30)
        except subprocess.TimeoutExpired:
            child.kill()


@pytest.mark.parametrize("template", list(TABLE))
def test_table_command(workspace, template):
    values, extra, needs = TABLE[template]
    if template == "emo-jax app":
        serve_app(workspace)
        return
    for need in needs:
        if need in FILES:
            workspace.file(need)
        elif need in BLOCKS:
            workspace.block(need)
        else:
            test_table_command(workspace, need)
    argv = fill(template, values)
    with workspace.inside():
        if template in workspace.done:
            return
        workspace.run(argv, {argv[1]: extra}, f"README Commands: {template}")
    workspace.done.add(template)


def test_top_level_pipeline_import_is_lazy():
    """`from emo_jax import EMOPipeline` (the README's) works; `import emo_jax` loads no JAX."""
    code = (
        "import sys, emo_jax; assert 'jax' not in sys.modules, 'import emo_jax loaded jax'; "
        "from emo_jax import EMOPipeline; from emo_jax.pipeline import EMOPipeline as P; "
        "assert EMOPipeline is P; emo_jax.nothing"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert "AttributeError: module 'emo_jax' has no attribute 'nothing'" in done.stderr, done.stderr
