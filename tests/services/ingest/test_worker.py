"""Camera workers without Kafka: a collecting sink stands in for the producer."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from services.ingest.config import load_cameras
from services.ingest.worker import CameraConfig, CameraWorker, buffer_policy
from vlm_core.buffering import BufferPolicy
from vlm_core.contracts.frame import Frame
from vlm_core.errors import ConfigError


class Sink:
    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self.lock = threading.Lock()

    def __call__(self, frame: Frame, done: Callable[[BaseException | None], None]) -> None:
        with self.lock:
            self.frames.append(frame)
        done(None)


def _gauge(name: str, **labels: str) -> float | None:
    from services.ingest.metrics import REGISTRY

    return REGISTRY.get_sample_value(name, labels)


def test_failing_camera_does_not_stop_the_others() -> None:
    stop = threading.Event()
    good_sink, bad_sink = Sink(), Sink()
    port = _closed_port()
    bad = CameraWorker(  # nothing listens there: a transient error, retried with backoff
        CameraConfig(
            "broken", f"rtsp://127.0.0.1:{port}/stream", fps=50, reconnect_initial_s=0.05, reconnect_max_s=0.1
        ),
        bad_sink,
        stop,
    )
    good = CameraWorker(
        CameraConfig("synthetic", "synthetic://?seed=1&width=96&height=64", fps=50, max_frames=25), good_sink, stop
    )
    bad.start()
    good.start()
    good.join(20)
    deadline = time.monotonic() + 20
    while bad.stats.reconnects < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gauge("vlm_ingest_camera_up", camera_id="broken") == 0
    assert _gauge("vlm_ingest_camera_down_reason", camera_id="broken", reason="open_failed") == 1
    stop.set()
    bad.join(20)
    assert not good.is_alive() and not bad.is_alive()
    assert [f.seq for f in good_sink.frames] == list(range(25))
    assert good.stats.sent == 25
    assert bad_sink.frames == []
    assert bad.stats.reconnects >= 2 and "open failed" in bad.stats.last_error
    assert not bad.stats.permanent_error
    assert _gauge("vlm_ingest_camera_up", camera_id="synthetic") is None, "a finished camera is not down"


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_file_that_is_not_a_video_stops_its_camera_at_once(tmp_path: Path) -> None:
    bogus = tmp_path / "notes.avi"
    bogus.write_bytes(b"not a video")
    worker = CameraWorker(CameraConfig("bogus-файл", str(bogus), reconnect_initial_s=5), Sink(), threading.Event())
    worker.start()
    worker.join(10)
    assert not worker.is_alive(), "a permanent error is not retried"
    assert worker.stats.reconnects == 0 and "as a video" in worker.stats.permanent_error
    label = "bogus-\\u0444\\u0430\\u0439\\u043b"
    assert _gauge("vlm_ingest_camera_up", camera_id=label) == 0
    assert _gauge("vlm_ingest_camera_down_reason", camera_id=label, reason="not_a_video") == 1


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("/etc/passwd", "as a video"),
        ("synthetic://?seed=abc", "seed='abc'"),
        ("synthetic://?speed=3", "unknown synthetic source parameter"),
    ],
)
def test_runner_refuses_permanent_source_errors_up_front(source: str, message: str) -> None:
    from services.ingest.worker import IngestRunner

    with pytest.raises(ConfigError, match=message):
        IngestRunner([CameraConfig("c", source)], "127.0.0.1:1", "frames")


def test_runner_refuses_bad_camera_ids_and_negative_fps() -> None:
    from services.ingest.worker import IngestRunner

    with pytest.raises(ConfigError, match="camera id"):
        IngestRunner([CameraConfig("a\nb", "synthetic://")], "127.0.0.1:1", "frames")
    with pytest.raises(ConfigError, match="negative"):
        IngestRunner([CameraConfig("c", "synthetic://", fps=-5)], "127.0.0.1:1", "frames")


def test_file_is_sampled_to_fps_and_resized() -> None:
    from vlm_core.sources import sample_video_path

    path = sample_video_path()
    assert path is not None
    sink = Sink()
    worker = CameraWorker(
        CameraConfig("vtest", str(path), fps=200, max_width=320, max_frames=10), sink, threading.Event()
    )
    worker.run()
    assert len(sink.frames) == 10
    assert {(f.width, f.height) for f in sink.frames} == {(320, 240)}


def test_sources_yaml(tmp_path: Path) -> None:
    path = tmp_path / "sources.yaml"
    path.write_text(
        "fps: 5\ncameras:\n  - camera_id: a\n    source: synthetic://\n  - camera_id: b\n    source: device:0\n"
        "    fps: 2\n    max_width: 320\n"
    )
    cams = load_cameras(path)
    assert [(c.camera_id, c.fps, c.max_width) for c in cams] == [("a", 5.0, 640), ("b", 2.0, 320)]
    path.write_text("cameras:\n  - camera_id: a\n    source: synthetic://\n    fps: -1\n")
    with pytest.raises(ConfigError, match="fps"):
        load_cameras(path)
    path.write_text("cameras: []\n")
    with pytest.raises(ConfigError):
        load_cameras(path)


def test_example_sources_file_parses() -> None:
    example = Path(__file__).parents[3] / "deploy" / "ingest" / "sources.example.yaml"
    assert [c.camera_id for c in load_cameras(example)] == ["lobby", "synthetic-0", "gate"]


@pytest.mark.parametrize(
    ("source", "policy"),
    [
        ("synthetic://?seed=1", BufferPolicy.BLOCK),  # a generator waits: ingest lost 115 of 1,500 dropping
        ("{tmp}/clip.mp4", BufferPolicy.BLOCK),
        ("rtsp://127.0.0.1:8554/cam", BufferPolicy.DROP_OLDEST),
        ("http://127.0.0.1:8080/stream.mjpg", BufferPolicy.DROP_OLDEST),
        ("device:0", BufferPolicy.DROP_OLDEST),
    ],
)
def test_a_full_buffer_makes_a_source_read_on_demand_wait_and_a_live_one_drop(
    source: str, policy: BufferPolicy, tmp_path: Path
) -> None:
    (tmp_path / "clip.mp4").write_bytes(b"")  # a file is read on demand whatever it holds
    source = source.format(tmp=tmp_path)
    assert buffer_policy(CameraConfig("c", source)) is policy
    dropping = CameraConfig("c", source, buffer_policy=BufferPolicy.DROP_OLDEST)
    assert buffer_policy(dropping) is BufferPolicy.DROP_OLDEST  # what a camera asks for, it gets
