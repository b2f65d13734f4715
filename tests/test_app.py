"""`emo-jax app` served in this process on a free localhost port at the tiny config with random
weights (64 px, 2 steps, a 1 s sentence: 25 frames in 4 clips): driven by the Gradio client
(uploads, the mp4, errors, one request at a time) and by headless Chromium (the page, the video
element, the error box); the request handler's progress over clips and steps; and no network
traffic beyond localhost.

Browser set-up (Debian): apt-get install -y chromium chromium-driver; pip install selenium.
(docs/app.png, the page with the built-in model, comes from tools/app_screenshot.py.)"""

import ipaddress
import shutil
import socket
import sys
import tempfile
import threading
import urllib.request
import warnings
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile
from PIL import Image

pytest.importorskip("gradio", reason="the app extra is not installed (pip install -e .[app])")

from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from emo_jax.app import API_NAME, _friendly, launch, make_generate  # noqa: E402
from emo_jax.cli import build_parser  # noqa: E402
from emo_jax.faces.detect import dlib_available  # noqa: E402
from emo_jax.pipeline import EMOPipeline, RandomWeightsWarning  # noqa: E402
from emo_jax.pipeline.inputs import prepare_reference  # noqa: E402
from emo_jax.pipeline.loading import TINY_CONFIG  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))  # app_screenshot: the browser (imported when used)
ASSETS = ROOT / "emo_jax" / "assets"
PORTRAIT = ASSETS / "portrait.png"
# steps, sampler, guidance, audio guidance (0: off), speed, seed, clip frames, resolution
OPTIONS = (2, "ddim", 3.5, 0.0, 0.5, 0, 8, 64)
FRAMES, CLIPS = 25, 4
LOCAL_HOSTS = {None, "", "localhost", "127.0.0.1", "::1", "0.0.0.0"}


class NetworkLog:
    """Records every name lookup and connection of this process that leaves the machine."""

    def __init__(self):
        self.outside: list[str] = []

    def getaddrinfo(self, real):
        def wrapped(host, *args, **kw):
            name = host.decode() if isinstance(host, bytes) else host
            if name not in LOCAL_HOSTS and not _is_loopback(name):
                self.outside.append(f"lookup {name}")
            return real(host, *args, **kw)

        return wrapped

    def connect(self, real):
        log = self

        def wrapped(sock, address):
            if isinstance(address, tuple) and not _is_loopback(address[0]):
                log.outside.append(f"connect {address}")
            return real(sock, address)

        return wrapped


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Concurrency:
    """Wraps a function; counts how many calls ran at the same time, at most."""

    def __init__(self, fn):
        self.fn, self.active, self.most, self.lock = fn, 0, 0, threading.Lock()

    def __call__(self, *args, **kw):
        with self.lock:
            self.active += 1
            self.most = max(self.most, self.active)
        try:
            return self.fn(*args, **kw)
        finally:
            with self.lock:
                self.active -= 1


@pytest.fixture(scope="module")
def network():
    log = NetworkLog()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket, "getaddrinfo", log.getaddrinfo(socket.getaddrinfo))
        mp.setattr(socket.socket, "connect", log.connect(socket.socket.connect))
        yield log


@pytest.fixture(scope="module")
def pipe():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        pipe = EMOPipeline.from_pretrained(None, TINY_CONFIG)
    pipe.generate = Concurrency(pipe.generate)
    return pipe


@pytest.fixture(scope="module")
def url(network, pipe):
    port = _free_port()
    app = launch(pipe, "127.0.0.1", port, block=False)
    yield f"http://127.0.0.1:{port}/"
    app.close()


@pytest.fixture(scope="module")
def client(url):
    import huggingface_hub.constants

    with pytest.MonkeyPatch.context() as mp:  # its headers would look up the Hub's agent list
        mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        return Client(url, verbose=False, analytics_enabled=False)


def _two_faces() -> np.ndarray:
    """The astronaut twice, the second smaller and mirrored, side by side."""
    import cv2
    from skimage import data

    face = data.astronaut()[:320, 60:380]
    canvas = np.full((320, 640, 3), 200, np.uint8)
    canvas[:, :320], canvas[40:280, 380:620] = face, cv2.resize(face[:, ::-1], (240, 240))
    return canvas


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A 1 s sentence (the shipped one, cut), an audio file that is text, a faceless image."""
    folder = tmp_path_factory.mktemp("inputs")
    wave, rate = soundfile.read(ASSETS / "speech.wav", dtype="float32")
    soundfile.write(folder / "speech_1s.wav", wave[:rate], rate)
    (folder / "broken.wav").write_text("hello, I am not audio\n")
    Image.new("RGB", (96, 96), (128, 128, 128)).save(folder / "blank.png")
    Image.fromarray(_two_faces()).save(folder / "two_faces.png")
    return {p.stem: p for p in folder.iterdir()}


def _check_mp4(path: str | Path, seconds: float = 1.0) -> np.ndarray:
    """The mp4's frames, after checking its streams: H.264 64 px at 25 fps with AAC audio."""
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        assert video.codec_context.name == "h264"
        assert (video.codec_context.width, video.codec_context.height) == (64, 64)
        assert video.average_rate == 25
        assert container.streams.audio[0].codec_context.name == "aac"
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video)])
    with av.open(str(path)) as container:
        samples = sum(f.samples for f in container.decode(audio=0))
        rate = container.streams.audio[0].rate
    assert frames.shape == (FRAMES, 64, 64, 3)
    assert abs(samples / rate - seconds) < 0.07  # within one AAC frame
    return frames


def test_cli_registers_app():
    args = build_parser().parse_args(["app"])
    assert (args.host, args.port, args.checkpoint) == ("127.0.0.1", 7860, None)
    assert args.func.__module__ == "emo_jax.commands.app"


def test_generate_through_the_api(client, files, pipe):
    """Two requests sent at once: both videos come back, made one after the other."""
    audio = handle_file(str(files["speech_1s"]))
    jobs = [
        client.submit(
            handle_file(str(PORTRAIT)),
            audio,
            *OPTIONS[:5],
            seed,
            *OPTIONS[6:],
            None,
            None,
            api_name=f"/{API_NAME}",
        )
        for seed in (0, 1)
    ]
    results = [job.result(timeout=600) for job in jobs]
    videos = [_check_mp4(path) for path, _ in results]
    for _, summary in results:
        assert summary.startswith(f"{FRAMES} frames (1.00 s at 25 fps) in {CLIPS} clips, 64 px")
    assert not np.array_equal(videos[0], videos[1])  # the seed reached the sampler
    assert pipe.generate.most == 1


@pytest.mark.parametrize(
    "image, audio, message",
    [
        ("portrait", "broken", "audio 'broken.wav': not an audio file"),
        ("blank", "speech_1s", "portrait 'blank.png': no face found in the portrait"),
        ("portrait", None, "Upload an audio file, or pick the example."),
    ],
)
def test_bad_input_is_a_message(client, files, image, audio, message):
    image = handle_file(str(PORTRAIT if image == "portrait" else files[image]))
    audio = None if audio is None else handle_file(str(files[audio]))
    with pytest.raises(AppError) as error:
        client.predict(image, audio, *OPTIONS, None, None, api_name=f"/{API_NAME}")
    assert str(error.value).startswith(message)


@pytest.mark.skipif(not dlib_available(), reason="pip install 'emo-jax[faces]' (dlib-bin)")
def test_face_field_picks_one_of_several_faces(client, files, pipe, monkeypatch):
    """Face 1 is the second face (the same crop as the pipeline's `face=1`); a number with no
    face is a message in the page's words; so is the notice of several faces."""
    image, audio = handle_file(str(files["two_faces"])), handle_file(str(files["speech_1s"]))
    with pytest.raises(AppError) as error:
        client.predict(image, audio, *OPTIONS, None, 2, api_name=f"/{API_NAME}")
    assert "Face 2: 2 face(s) found, numbered 0 to 1" in str(error.value)
    assert "--face" not in str(error.value)

    jobs, prepare = [], pipe.prepare

    def recorded(*args, **kw):
        jobs.append(prepare(*args, **kw))
        return jobs[-1]

    monkeypatch.setattr(pipe, "prepare", recorded)
    _, summary = client.predict(image, audio, *OPTIONS, None, 1, api_name=f"/{API_NAME}")
    second = prepare_reference(files["two_faces"], 64, detector="dlib", face=1)
    largest = prepare_reference(files["two_faces"], 64, detector="dlib")
    assert [job.reference.crop for job in jobs] == [second.crop] != [largest.crop]
    assert "faces found" not in summary
    notice = _friendly(largest.notice, {str(files["two_faces"]): "portrait"})
    assert notice.startswith("portrait 'two_faces.png': 2 faces found; using the largest (Face 0)")


def test_progress_over_clips_and_steps(pipe, files, tmp_path):
    reports = []
    handler = make_generate(pipe, tmp_path)
    path, _ = handler(
        str(PORTRAIT),
        str(files["speech_1s"]),
        *OPTIONS,
        progress=lambda value, desc=None, **kw: reports.append((value, desc)),
    )
    steps = [(v, d) for v, d in reports if isinstance(v, tuple)]
    assert steps == [
        ((k * 2 + s, CLIPS * 2), f"clip {k + 1}/{CLIPS}, step {s}/2")
        for k in range(CLIPS)
        for s in (1, 2)
    ]
    assert [d for v, d in reports if not isinstance(v, tuple)] == [
        "reading the inputs",
        f"clip 1/{CLIPS}: starting (may compile the model)",
    ]
    _check_mp4(path)


# ---------------------------------------------------------------- the page in a real browser


@pytest.fixture(scope="module")
def browser():
    pytest.importorskip(
        "selenium.webdriver", reason="selenium is not installed (pip install selenium)"
    )
    from app_screenshot import MISSING, chromium

    profile = tempfile.mkdtemp(prefix="emo_jax_chromium_")
    chrome = chromium(profile)
    if chrome is None:
        shutil.rmtree(profile, ignore_errors=True)
        pytest.skip(MISSING)
    yield chrome
    chrome.quit()
    shutil.rmtree(profile, ignore_errors=True)


def _wait(fn, timeout: float, what: str):
    """fn()'s first truthy value, polled until `timeout` seconds (tools/app_screenshot.py)."""
    from app_screenshot import wait

    return wait(fn, timeout, what)


def _open_and_upload(chrome, url: str, image: Path, audio: Path) -> None:
    from selenium.webdriver.common.by import By

    chrome.get(url)
    _wait(lambda: chrome.find_elements(By.ID, "generate"), 60, "the page")
    chrome.find_element(By.CSS_SELECTOR, "#portrait input[type=file]").send_keys(str(image))
    chrome.find_element(By.CSS_SELECTOR, "#audio input[type=file]").send_keys(str(audio))
    shown = "return document.querySelector('#portrait img')?.src || ''"
    _wait(lambda: chrome.execute_script(shown).endswith(image.name), 30, "the portrait")
    clear = "#audio button[aria-label='Clear']"  # there once the upload is the audio's value
    _wait(lambda: chrome.find_elements(By.CSS_SELECTOR, clear), 30, "the audio")


def _set_number(chrome, elem_id: str, value: int) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = chrome.find_element(By.CSS_SELECTOR, f"#{elem_id} input[type=number]")
    box.clear()
    box.send_keys(f"{value}{Keys.TAB}")


VIDEO_STATE = """const v = document.querySelector('#video video');
return v && v.src ? [v.src, v.readyState, v.duration, v.error && v.error.code] : null;"""


def test_page_in_a_browser(browser, url, files):
    from selenium.webdriver.common.by import By

    _open_and_upload(browser, url, PORTRAIT, files["broken"])
    browser.find_element(By.ID, "generate").click()
    message = "audio 'broken.wav': not an audio file"
    shown = f'//*[contains(text(), "{message}")]'
    _wait(
        lambda: any(e.is_displayed() for e in browser.find_elements(By.XPATH, shown)),
        60,
        "the error message",
    )

    _open_and_upload(browser, url, PORTRAIT, files["speech_1s"])
    _set_number(browser, "steps", 2)
    _set_number(browser, "resolution", 64)
    browser.find_element(By.ID, "generate").click()
    src, ready, duration, failed = _wait(
        lambda: (s := browser.execute_script(VIDEO_STATE)) and s[1] >= 2 and s, 600, "the video"
    )
    assert failed is None and abs(duration - 1.0) < 0.1  # decoded by the browser: playable
    assert src.startswith(url)
    with urllib.request.urlopen(src) as response, tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "video.mp4").write_bytes(response.read())
        _check_mp4(Path(tmp, "video.mp4"))
    summary = browser.find_element(By.ID, "summary").text
    assert summary.startswith(f"{FRAMES} frames (1.00 s at 25 fps) in {CLIPS} clips, 64 px")
    requested = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    assert requested and all(name.startswith(url) for name in requested), requested


def test_no_outside_network(network, url, client):
    assert network.outside == []
