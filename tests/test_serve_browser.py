"""The demo page in a real browser: headless Chromium (Selenium, the system chromedriver) against the
`molmo_jax.cli.serve` server on loopback, answering with a tiny model that has memorised a pointing
answer about a golden photograph."""

from __future__ import annotations

import math
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import REPO_ROOT, require_golden
from helpers import DEFAULT_TEXTS, golden_tiny_checkpoint, train_bpe_tokenizer

pytestmark = pytest.mark.slow

PROMPT = "Point to the eyes of the cat."
# The cat's two eyes in chelsea_451x300, in percent of the image size.
ANSWER = '<points x1="38.1" y1="38.3" x2="70.5" y2="45.7" alt="eyes">eyes</points>'
MAX_NEW = 64
TRAIN_STEPS = 40


def _find_chromium() -> tuple[str, str]:
    """(browser, chromedriver) paths; skips without them, but fails under CI."""
    browser = next(filter(None, map(shutil.which, ("chromium", "chromium-browser"))), None)
    driver = shutil.which("chromedriver")
    if browser and driver:
        return browser, driver
    reason = "headless Chromium not found (install the Debian packages chromium and chromium-driver)"
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(reason + "; CI must run this test")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def image_path() -> Path:
    return require_golden("preprocess", "chelsea_451x300", "image.png")


@pytest.fixture(scope="module")
def pointing_checkpoint(tmp_path_factory, image_path) -> tuple[Path, str, list]:
    """The golden tiny model fine-tuned to give ANSWER for (image, PROMPT), saved as a checkpoint.

    Returns (folder, greedy answer of the saved model, its points in pixels)."""
    import jax
    from flax import nnx

    import molmo_jax
    from molmo_jax.train.optimizer import GroupSettings, OptimizerSettings, build_optimizer
    from molmo_jax.train.step import StepSettings, make_train_step

    src = golden_tiny_checkpoint(tmp_path_factory.mktemp("golden_tiny"))
    # A tokenizer that knows the answer's pieces keeps the answer short (fewer steps to learn).
    train_bpe_tokenizer(src, DEFAULT_TEXTS + [ANSWER] * 20, vocab_size=300)
    model = molmo_jax.load_pretrained(src)
    processor = molmo_jax.MolmoProcessor.from_pretrained(src)
    example = processor(images=str(image_path), messages=[PROMPT, ANSWER], style="demo")
    batch = {k: v[None] for k, v in example.items()}

    # The image never changes, so the vision tower stays as it is and only the rest learns.
    frozen = ("llm.embedding", "vision")
    graphdef, params = nnx.split(model, nnx.Param)
    settings = OptimizerSettings(
        groups={g: GroupSettings(3e-3, 5) for g in ("connector", "vit", "llm")},
        total_steps=TRAIN_STEPS,
        max_grad_norm=None,
        frozen=frozen,
    )
    tx = build_optimizer(settings, params)
    step = jax.jit(make_train_step(graphdef, tx, StepSettings(frozen=frozen)), donate_argnums=(0, 1))
    opt_state = tx.init(params)
    for _ in range(TRAIN_STEPS):
        params, opt_state, metrics = step(params, opt_state, batch)
    assert float(metrics["loss"]) < 0.2, float(metrics["loss"])
    nnx.update(model, params)

    folder = tmp_path_factory.mktemp("pointing_tiny")
    molmo_jax.save_pretrained(model, folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(src / name, folder / name)
    saved = molmo_jax.load_pretrained(folder)
    out = molmo_jax.generate(
        saved,
        molmo_jax.MolmoProcessor.from_pretrained(folder),
        [str(image_path)],
        [PROMPT],
        max_new_tokens=MAX_NEW,
    )
    assert out.texts[0].strip() == ANSWER, out.texts[0]
    assert len(out.points[0]) == 2
    return folder, out.texts[0], out.points[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server_url(pointing_checkpoint, tmp_path_factory):
    """`python -m molmo_jax.cli.serve` on 127.0.0.1 and a free port; yields its base URL."""
    folder = pointing_checkpoint[0]
    port = _free_port()
    log = tmp_path_factory.mktemp("server_log") / "serve.log"
    cmd = [
        sys.executable, "-m", "molmo_jax.cli.serve", f"--checkpoint={folder}", "--host=127.0.0.1",
        f"--port={port}", f"--max_new_tokens={MAX_NEW}", f"--default_max_tokens={MAX_NEW}",
        "--log_level=warning",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device, as users run it
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server did not come up:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def chromium() -> tuple[str, str]:
    """Looked up before the (module-scoped) model and server fixtures, so a skip costs nothing."""
    return _find_chromium()


@pytest.fixture()
def browser(chromium, tmp_path, monkeypatch):
    """Headless Chromium through the system chromedriver, given by path."""
    binary, chromedriver = chromium
    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must not download anything
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1000,1100", f"--user-data-dir={tmp_path / 'chrome_profile'}"):  # fmt: skip
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_page_uploads_asks_and_draws_the_points(
    chromium, browser, server_url, pointing_checkpoint, image_path, tmp_path
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _, expected_text, expected_points = pointing_checkpoint
    browser.get(server_url + "/")
    assert browser.title.startswith("Molmo")
    wait = WebDriverWait(browser, 60)
    # The page takes its default max_tokens from the server's limits.
    wait.until(lambda d: d.find_element(By.ID, "max_tokens").get_attribute("value") == str(MAX_NEW))

    browser.find_element(By.ID, "file").send_keys(str(image_path))
    canvas = browser.find_element(By.ID, "canvas")
    wait.until(lambda d: canvas.is_displayed() and canvas.get_attribute("width") == "451")
    prompt = browser.find_element(By.ID, "prompt")
    prompt.clear()
    prompt.send_keys(PROMPT)
    browser.find_element(By.ID, "ask").click()

    meta = browser.find_element(By.ID, "meta")
    wait.until(lambda d: "latency" in meta.text or "failed" in meta.text)
    answer = browser.find_element(By.ID, "answer")
    browser.save_screenshot(str(tmp_path / "page.png"))
    assert "failed" not in meta.text, answer.text
    assert answer.text.strip() == expected_text.strip()
    assert re.search(r"latency \d+\.\d\d s", meta.text), meta.text
    assert "2 point(s)" in meta.text and "finish: stop" in meta.text, meta.text

    # One circle per returned point, at the point (image pixels), over the image where it is shown;
    # also once the window is too narrow for the image and the page scales it down.
    _check_circles(browser, expected_points, shown_width=451)
    browser.set_window_size(380, 900)
    _check_circles(browser, expected_points, shown_width=None)
    browser.save_screenshot(str(tmp_path / "page_narrow.png"))


def _check_circles(browser, expected_points: list, shown_width: int | None) -> None:
    """The overlay's circles sit at `expected_points` (image pixels) of the canvas as laid out, which
    is `shown_width` wide (None: narrower than the image)."""
    from selenium.webdriver.common.by import By

    circles = browser.find_elements(By.CSS_SELECTOR, "#overlay circle.point")
    assert len(circles) == len(expected_points) == 2
    drawn = [(float(c.get_attribute("cx")), float(c.get_attribute("cy"))) for c in circles]
    assert all(
        math.isclose(x, ex, abs_tol=1e-6) and math.isclose(y, ey, abs_tol=1e-6)
        for (x, y), (ex, ey) in zip(drawn, expected_points)
    ), (drawn, expected_points)
    box = browser.execute_script(
        "const r = document.getElementById('canvas').getBoundingClientRect();"
        "return [r.x, r.y, r.width, r.height, document.documentElement.clientWidth];"
    )
    x0, y0, width, height, page_width = box
    assert 0 < width <= page_width and math.isclose(width / 451, height / 300, rel_tol=0.01), box
    if shown_width is None:
        assert width < 451, box  # scaled down to fit
    else:
        assert width == pytest.approx(shown_width, abs=0.5), box
    scale = width / 451
    for c, (ex, ey) in zip(circles, expected_points):
        r = c.rect
        cx, cy = r["x"] + r["width"] / 2, r["y"] + r["height"] / 2
        assert abs(cx - (x0 + ex * scale)) < 1.5 and abs(cy - (y0 + ey * scale)) < 1.5, (r, box)
