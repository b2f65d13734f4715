"""docs/app.png: the web app with the built-in default model after a run of its example.

Serves `emo-jax app` in this process on a free localhost port, opens it in headless Chromium
(apt-get install -y chromium chromium-driver; pip install selenium), clicks the example
(face.png + speech.wav), presses Generate, waits for the video and saves the page.

    python tools/app_screenshot.py [--out docs/app.png]
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from emo_jax.app import launch
from emo_jax.pipeline import EMOPipeline

VIDEO_READY = "const v = document.querySelector('#video video'); return !!v && v.readyState >= 2;"


MISSING = "Chromium or its driver is not installed (apt-get install -y chromium chromium-driver)"
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1280,1300",
)


def chromium(profile: str) -> webdriver.Chrome | None:
    """Headless Chromium with its user data in `profile` (also tests/test_app.py's browser);
    None if Chromium or its driver is not installed."""
    binary = next(filter(None, map(shutil.which, ("chromium", "chromium-browser"))), None)
    driver = shutil.which("chromedriver")
    if binary is None or driver is None:
        return None
    os.environ.setdefault("SE_AVOID_STATS", "true")  # no Selenium Manager usage statistics
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options)


def wait(condition: Callable[[], Any], seconds: float, what: str) -> Any:
    """condition()'s first truthy value, polled until `seconds` have passed."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if value := condition():
            return value
        time.sleep(0.25)
    raise TimeoutError(f"timed out after {seconds:.0f} s waiting for {what}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="docs/app.png")
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = launch(EMOPipeline.from_pretrained(), "127.0.0.1", port, block=False)
    profile = tempfile.mkdtemp(prefix="emo_jax_chromium_")
    browser = chromium(profile)
    if browser is None:
        app.close()
        shutil.rmtree(profile, ignore_errors=True)
        sys.exit(MISSING)
    try:
        browser.get(f"http://127.0.0.1:{port}/")
        wait(lambda: browser.find_elements(By.ID, "generate"), 60, "the page")
        browser.find_element(By.CSS_SELECTOR, ".gallery-item, table tbody tr").click()
        wait(lambda: browser.find_elements(By.CSS_SELECTOR, "#portrait img"), 30, "the example")
        browser.find_element(By.ID, "generate").click()
        wait(lambda: browser.execute_script(VIDEO_READY), 1200, "the video")
        browser.execute_script(
            "const v = document.querySelector('#video video'); v.pause(); v.currentTime = 1.2;"
        )
        time.sleep(2)
        browser.execute_script("window.scrollTo(0, 0)")
        shot = Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("RGB")
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        shot.quantize(128).save(args.out, optimize=True)  # a small PNG
        print(f"{args.out}: {shot.width}x{shot.height}")
    finally:
        browser.quit()
        app.close()
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    main()
