"""The live view against the real pipeline (real Kafka, real Ray Serve, the trained test
detector) in a real headless browser (Debian chromium through chromedriver)."""

from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from services import kafka_io
from services.view import LiveHub, ViewServer, ViewSettings
from tests.integration.tracking import detector_registry, fresh_topics, tracked_args, tracked_pipeline
from vlm_core.config import Topics
from vlm_core.contracts.frame import Frame
from vlm_core.datasets.scenes import SceneConfig, SceneMotion, SceneVideo
from vlm_core.pipeline import CameraRouting

pytestmark = pytest.mark.integration

TOKEN = "view-test-token-0123456789"
CAMERAS = ("cam-a", "cam-b")
FPS = 3.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Feeder(threading.Thread):
    """Live synthetic cameras: frames stamped with the wall clock, FPS per camera."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.topic = bootstrap, topic
        self.halt = threading.Event()
        motion = SceneMotion(bounce=False, line_x=0.5, min_speed=4.0, max_speed=6.0)
        config = SceneConfig(min_items=3, max_items=3, min_item_size=64, max_item_size=96)
        self.videos = {cam: SceneVideo(config, seed=i + 7, motion=motion) for i, cam in enumerate(CAMERAS)}

    def run(self) -> None:
        producer = kafka_io.producer(self.bootstrap)
        seq = 0
        try:
            while not self.halt.is_set():
                for cam, video in self.videos.items():
                    frame = Frame.from_image(video.next().image, camera_id=cam, seq=seq)
                    kafka_io.send_frame(producer, self.topic, frame)
                producer.flush(10)
                seq += 1
                self.halt.wait(1 / FPS)
        finally:
            producer.close()


@pytest.fixture(scope="module")
def live(kafka_bootstrap: str, ray_address: str) -> Iterator[tuple[ViewServer, Topics]]:
    registry = detector_registry(ray_address)
    topics = fresh_topics(kafka_bootstrap)
    routing = CameraRouting.model_validate(tracked_args(kafka_bootstrap, topics, registry)["cameras"])
    with tracked_pipeline(ray_address, kafka_bootstrap, topics, registry):
        server = ViewServer(
            LiveHub(kafka_bootstrap, topics, routing), ViewSettings(port=free_port(), token=TOKEN)
        ).start()
        feeder = Feeder(kafka_bootstrap, topics.frames)
        feeder.start()
        try:
            yield server, topics
        finally:
            feeder.halt.set()
            feeder.join(10)
            server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    assert binary and driver_path, "Debian chromium and chromium-driver are needed (make bootstrap installs them)"
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,900"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def tile_pixels(driver: object, camera: str) -> np.ndarray:
    import cv2

    url = driver.execute_script(  # type: ignore[attr-defined]
        "return document.querySelector(`.tile[data-camera='${arguments[0]}'] canvas`).toDataURL('image/png')", camera
    )
    data = base64.b64decode(url.split(",", 1)[1])
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)


def wait_for(check, timeout_s: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


def test_the_page_shows_every_camera_live_with_events_and_no_console_errors(live, browser) -> None:  # type: ignore[no-untyped-def]
    server, _topics = live
    driver = browser
    driver.get(f"{server.settings.url}?token={TOKEN}")
    # Every camera tile has drawn a frame (its stats line says so once frames are joined).
    wait_for(
        lambda: all(
            driver.execute_script(
                "const t = document.querySelector(`.tile[data-camera='${arguments[0]}'] .stats`);"
                "return t !== null && t.textContent.includes('fps');",
                cam,
            )
            for cam in CAMERAS
        ),
        180,
        "both camera tiles",
    )
    wait_for(lambda: all(tile_pixels(driver, cam).std() > 5 for cam in CAMERAS), 60, "frames drawn in both tiles")
    first = {cam: tile_pixels(driver, cam) for cam in CAMERAS}
    time.sleep(2)
    second = {cam: tile_pixels(driver, cam) for cam in CAMERAS}
    for cam in CAMERAS:
        assert first[cam].shape == second[cam].shape
        changed = np.abs(first[cam].astype(int) - second[cam].astype(int)).max(axis=2) > 30
        assert changed.mean() > 0.002, f"{cam}'s tile did not change in 2 s"
    # The event feed shows an event (a line crossing or a periodic count) within 30 s.
    wait_for(lambda: driver.execute_script("return document.querySelectorAll('#events li').length"), 30, "an event")
    # Models and rates are shown; the source URI is not (the page never gets it).
    stats = driver.execute_script("return document.querySelector('.tile .models').textContent")
    assert "detection: scenes-detector@" in stats
    page = driver.page_source
    assert "synthetic://" not in page and "rtsp://" not in page
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == [], errors
    shot = os.environ.get("VLM_VIEW_SCREENSHOT")
    if shot:  # the README's screenshot: VLM_VIEW_SCREENSHOT=docs/view/live-view.png
        Path(shot).parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(shot)


def test_the_websocket_and_state_are_refused_without_the_token(live) -> None:  # type: ignore[no-untyped-def]
    server, _topics = live
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{server.settings.url}api/state", timeout=5)
    assert refused.value.code == 401


#: Inside the test's own network namespace: lo up, plus a non-loopback address on it.
NETNS_CHECK = r"""
set -e
ip link set lo up
ip addr add {addr}/32 dev lo
{python} -m services.cli view --host 0.0.0.0 --port 18000 && exit 99 || true
VLM_VIEW_TOKEN={token} {python} -m services.cli view --host {addr} --port 18000 > view.log 2>&1 &
url=http://{addr}:18000
for i in $(seq 150); do curl -sf -o /dev/null "$url/?token={token}" && break; sleep 0.2; done
echo "without: $(curl -s -o /dev/null -w '%{{http_code}}' $url/api/state)"
echo "wrong: $(curl -s -o /dev/null -w '%{{http_code}}' "$url/api/state?token=not-the-token-000000")"
echo "with: $(curl -s -o /dev/null -w '%{{http_code}}' "$url/?token={token}")"
kill %1
"""


@pytest.mark.skipif(shutil.which("unshare") is None or shutil.which("curl") is None, reason="needs unshare and curl")
def test_beyond_loopback_the_view_needs_its_token(tmp_path: Path) -> None:
    """In a network namespace of the test's own, the view on every address without a token
    refuses to start; on a non-loopback address with a token, a request without it gets 401."""
    script = NETNS_CHECK.format(python=sys.executable, token=TOKEN, addr="10.231.0.1")
    proc = subprocess.run(
        ["unshare", "-rn", "bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "error: the view would listen on 0.0.0.0 without a token" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "without: 401" in proc.stdout and "wrong: 401" in proc.stdout and "with: 200" in proc.stdout
