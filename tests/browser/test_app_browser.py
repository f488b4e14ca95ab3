"""`coarse2fine app` in a real browser: headless Chromium drives the page on the quick demo's runs.

Skipped (with the reason) where chromium, chromedriver, selenium or gradio are missing; .ci/run
installs them. Set C2F_APP_SCREENSHOT=path to also write the screenshot there (docs/app-screenshot.png).
"""
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
DRIVER = shutil.which("chromedriver")
MISSING = [name for name, ok in (("chromium", CHROMIUM), ("chromedriver", DRIVER),
                                  ("selenium", importlib.util.find_spec("selenium")),
                                  ("gradio", importlib.util.find_spec("gradio"))) if not ok]
if MISSING:
    pytest.skip(f"needs {', '.join(MISSING)} (apt-get install chromium chromium-driver; pip install -e '.[app]' "
                "selenium)", allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

WAIT_S = 90  # generous: the 2-core CI box may be busy


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(quick_demo_runs, tmp_path_factory):
    port = _free_port()
    log = tmp_path_factory.mktemp("app_log") / "app.log"
    src = str(Path(__file__).resolve().parents[2] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "coarse2fine.cli", "app", "--demo", str(quick_demo_runs),
                                 "--port", str(port)], stdout=fh, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + WAIT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the app exited with {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if time.time() > deadline:
                    pytest.fail(f"the app did not answer on {url} within {WAIT_S} s: {log.read_text()[-2000:]}")
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1280,900",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium_profile')}"):
        opts.add_argument(flag)
    drv = webdriver.Chrome(options=opts, service=Service(DRIVER))
    yield drv
    drv.quit()


def _srcs(drv, cls: str) -> list[str]:
    return [e.get_attribute("src") for e in drv.find_elements(By.CSS_SELECTOR, f"#c2f-results img.{cls}")]


def _status(drv) -> str:
    return drv.find_element(By.ID, "c2f-status").text


def _type(drv, elem_id: str, value: str) -> None:
    box = drv.find_element(By.CSS_SELECTOR, f"#{elem_id} input[type=number]")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(value, Keys.TAB)


def test_generate_then_redraw_details_in_chromium(app_url, browser, tmp_path):
    drv, wait = browser, WebDriverWait(browser, WAIT_S)
    drv.get(app_url)
    wait.until(lambda d: d.find_elements(By.ID, "c2f-generate"))
    # pick a class by name in the dropdown
    box = drv.find_element(By.CSS_SELECTOR, "#c2f-class input")
    box.click()
    option = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, 'li[role=option][aria-label="Sneaker"]'))[0]
    drv.execute_script("arguments[0].scrollIntoView({block: 'nearest'})", option)
    option.click()
    wait.until(lambda d: box.get_attribute("value") == "Sneaker")
    _type(drv, "c2f-n", "3")
    drv.find_element(By.ID, "c2f-generate").click()
    wait.until(lambda d: "3 x Sneaker, seed 0" in _status(d))
    coarse, images, base = _srcs(drv, "c2f-coarse"), _srcs(drv, "c2f-image"), _srcs(drv, "c2f-baseline")
    assert len(coarse) == len(images) == len(base) == 3
    assert all(s.startswith("data:image/png;base64,") for s in coarse + images + base)
    assert "stage 1" in _status(drv) and "stage 2" in _status(drv) and "decode" in _status(drv)

    drv.find_element(By.ID, "c2f-redraw").click()
    wait.until(lambda d: "details redrawn 1x" in _status(d))
    assert _srcs(drv, "c2f-coarse") == coarse  # stage 1 did not run again
    assert _srcs(drv, "c2f-baseline") == base
    after = _srcs(drv, "c2f-image")
    assert len(after) == 3 and after != images  # stage 2 drew new details
    shot = tmp_path / "app.png"
    drv.execute_script("window.scrollTo(0, 0)")
    drv.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    if os.environ.get("C2F_APP_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["C2F_APP_SCREENSHOT"])

    # a bad value gives a message on the page and keeps the last results
    _type(drv, "c2f-p1", "2")
    drv.find_element(By.ID, "c2f-generate").click()
    wait.until(lambda d: "Error" in _status(d))
    assert "stage-1 top-p must be in (0, 1], got 2" in _status(drv)
    assert "Traceback" not in drv.page_source and _srcs(drv, "c2f-image") == after
