from __future__ import annotations

import json
import struct

import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from services.view import LiveHub, Viewer, ViewSettings, build_view_app, frame_message, is_loopback
from vlm_core.config import Topics
from vlm_core.contracts.result import Detection, Detections, ModelRef, Result
from vlm_core.contracts.task import Task
from vlm_core.errors import ConfigError
from vlm_core.pipeline import CameraRouting
from vlm_core.stream.live import LiveFrame

TOKEN = "s3cret-token-0123456789"


def client(token: str | None) -> TestClient:
    # No lifespan: the hub's Kafka reader is not started; the routes and the gate are.
    hub = LiveHub("127.0.0.1:1", Topics(), CameraRouting())
    return TestClient(build_view_app(hub, ViewSettings(token=token)))


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("::1", True), ("localhost", True), ("0.0.0.0", False), ("10.0.0.5", False)],
)
def test_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_beyond_loopback_a_token_is_required() -> None:
    with pytest.raises(ConfigError, match="without a token"):
        ViewSettings(host="0.0.0.0").check()
    with pytest.raises(ConfigError, match="too short"):
        ViewSettings(host="0.0.0.0", token="short").check()
    ViewSettings(host="0.0.0.0", token=TOKEN).check()
    ViewSettings().check()


def test_without_a_token_set_the_page_and_state_are_served_with_strict_headers() -> None:
    c = client(None)
    page = c.get("/")
    assert page.status_code == 200 and "view.js" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert c.get("/api/state").json()["cameras"] == {}
    assert c.get("/view.js").headers["content-type"].startswith("text/javascript")


@pytest.mark.parametrize("path", ["/", "/api/state", "/api/events", "/metrics", "/view.js"])
def test_a_request_without_the_token_is_refused(path: str) -> None:
    c = client(TOKEN)
    assert c.get(path).status_code == 401
    assert c.get(path, params={"token": "wrong-token-0123456789"}).status_code == 401
    assert c.get(path, headers={"authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_the_page_sets_a_cookie_that_later_requests_carry() -> None:
    c = client(TOKEN)
    assert c.get("/", params={"token": TOKEN}).status_code == 200
    assert "vlm_view_token" in c.cookies
    assert c.get("/api/state").status_code == 200


def test_a_websocket_without_the_token_is_refused() -> None:
    c = client(TOKEN)
    with pytest.raises(WebSocketDisconnect) as refused, c.websocket_connect("/ws"):
        pass
    assert refused.value.code == 4401


def test_everything_is_read_only() -> None:
    c = client(None)
    for path in ("/", "/api/state", "/api/events"):
        assert c.post(path).status_code == 405


def live_frame(seq: int) -> LiveFrame:
    detections = Detections(ModelRef("det", "2"), (Detection((1, 2, 3, 4), "car", 2, 0.8, 5),))
    result = Result("cam", seq, 10, 20, 8, 8, {Task.DETECTION: detections})
    return LiveFrame("cam", seq, 10, b"JPEGBYTES", "image/jpeg", result, b"PNG")


def test_frame_message_is_header_image_mask() -> None:
    message = frame_message(live_frame(3))
    (length,) = struct.unpack(">I", message[:4])
    header = json.loads(message[4 : 4 + length])
    assert header["seq"] == 3 and header["result"]["tasks"]["detection"]["detections"][0]["track_id"] == 5
    body = message[4 + length :]
    assert body[: header["image_bytes"]] == b"JPEGBYTES" and body[header["image_bytes"] :] == b"PNG"


def test_a_viewer_keeps_only_the_newest_frame_per_camera() -> None:
    viewer = Viewer()
    assert not viewer.offer("cam", b"1")
    assert viewer.offer("cam", b"2")
    viewer.offer("other", b"3")
    frames, _events = viewer.take()
    assert frames == [b"2", b"3"] and viewer.skipped == 1
    assert viewer.take() == ([], [])
