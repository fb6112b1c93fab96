"""The app in a real browser: Debian's headless Chromium driven by Selenium through Debian's chromedriver.

Starts ``python app.py`` on 127.0.0.1 (free port) in a subprocess with a tiny classifier and an indexed
collection, uploads a non-image file (a message appears, the server keeps serving), then a generated image, and
checks that the predicted label, the fusion chart, the Gram heat map and the gallery appear. A screenshot is
saved in the test's tmp dir. Without Chromium or chromedriver this test FAILS (``.ci/run`` installs them).
"""

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image
from test_app import STYLES, make_collection, reference_outputs, save_model

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
START_TIMEOUT = 300  # seconds; generous because CI machines may be loaded
RESULT_TIMEOUT = 180


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_server(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"app.py exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    pytest.fail(f"app.py did not serve {url} within {START_TIMEOUT} s:\n{log.read_text()[-3000:]}")


def _browser():
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    if missing:
        pytest.fail(f"browser test needs Debian's Chromium and chromedriver, missing: {', '.join(missing)} "
                    f"(apt-get install chromium chromium-driver; .ci/run does this)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as err:
        pytest.fail(f"browser test needs selenium (pip install -e '.[app]'): {err}")
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never download a browser or driver
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1400,1300"):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)


def test_app_in_headless_chromium(tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    model_dir = save_model(tmp_path / "model")
    collection = make_collection(tmp_path / "collection")
    query = collection / "flat_poster" / "0.png"
    probabilities, _ = reference_outputs(model_dir, Image.open(query).convert("RGB"))
    expected_label = STYLES[int(probabilities.argmax())]
    not_an_image = tmp_path / "notes.txt"
    not_an_image.write_text("this is not a picture")
    fake_png = tmp_path / "fake.png"
    fake_png.write_text("this is not a picture either")

    port = _free_port()
    log = tmp_path / "app.log"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    with open(log, "w") as handle:
        process = subprocess.Popen(
            [sys.executable, str(REPO / "app.py"), "--model", str(model_dir), "--index", str(collection),
             "--host", "127.0.0.1", "--port", str(port)],
            stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    driver = None
    try:
        url = f"http://127.0.0.1:{port}/"
        _wait_for_server(url, process, log)
        driver = _browser()
        driver.get(url)
        wait = WebDriverWait(driver, RESULT_TIMEOUT)
        upload = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#query-image input[type=file]"))
        assert "6 images (6 added" in driver.find_element(By.ID, "index-status").text

        upload.send_keys(str(not_an_image))  # the front end refuses it by type, with a message
        wait.until(lambda d: "Invalid file type: notes.txt" in d.find_element(By.TAG_NAME, "body").text)
        upload.send_keys(str(fake_png))  # passes the type filter: the server answers with our message
        wait.until(lambda d: "fake.png is not an image this app can read" in d.find_element(By.ID, "status").text)
        assert str(fake_png.parent) not in driver.find_element(By.ID, "status").text  # no server paths leak

        driver.find_element(By.CSS_SELECTOR, "#query-image button[aria-label='Remove Image']").click()
        upload = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#query-image input[type=file]"))
        upload.send_keys(str(query))
        wait.until(lambda d: f"Predicted style: {expected_label}" in d.find_element(By.ID, "status").text)
        wait.until(lambda d: expected_label in d.find_element(By.ID, "prediction").text)
        fusion = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#fusion-plot img"))
        gram = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#gram-plot img"))
        gallery = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#gallery img") or False)
        for element in (fusion, gram):
            assert element.get_attribute("src").startswith("data:image/png")
            wait.until(lambda d, e=element: d.execute_script("return arguments[0].naturalWidth", e) > 100)
        assert len(gallery) >= 1
        assert "most similar images" in driver.find_element(By.ID, "gallery-note").text
        screenshot = tmp_path / "app_screenshot.png"
        driver.save_screenshot(str(screenshot))
        assert Image.open(screenshot).size[0] >= 1000
        assert process.poll() is None, "the server stopped"
    except Exception:
        if driver is not None:
            driver.save_screenshot(str(tmp_path / "failure.png"))
            print(f"page at failure: {tmp_path / 'failure.png'}\n{driver.find_element(By.TAG_NAME, 'body').text}")
        print(log.read_text()[-3000:])
        raise
    finally:
        if driver is not None:
            driver.quit()
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
