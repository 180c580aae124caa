"""Camera workers without Kafka: a collecting sink stands in for the producer."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from services.ingest.config import load_cameras
from services.ingest.worker import CameraConfig, CameraWorker
from vlm_core.errors import ConfigError
from vlm_core.frame import Frame


class Sink:
    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self.lock = threading.Lock()

    def __call__(self, frame: Frame, done: Callable[[BaseException | None], None]) -> None:
        with self.lock:
            self.frames.append(frame)
        done(None)


def test_failing_camera_does_not_stop_the_others(tmp_path: Path) -> None:
    stop = threading.Event()
    good_sink, bad_sink = Sink(), Sink()
    missing = tmp_path / "gone.avi"
    missing.write_bytes(b"not a video")  # exists, but OpenCV cannot open it
    bad = CameraWorker(
        CameraConfig("broken", str(missing), fps=50, reconnect_initial_s=0.05, reconnect_max_s=0.1, loop=True),
        bad_sink,
        stop,
    )
    good = CameraWorker(
        CameraConfig("synthetic", "synthetic://?seed=1&width=96&height=64", fps=50, max_frames=25), good_sink, stop
    )
    bad.start()
    good.start()
    good.join(20)
    time.sleep(0.3)
    stop.set()
    bad.join(5)
    assert not good.is_alive() and not bad.is_alive()
    assert [f.seq for f in good_sink.frames] == list(range(25))
    assert good.stats.sent == 25
    assert bad_sink.frames == []
    assert bad.stats.reconnects >= 2 and "open failed" in bad.stats.last_error


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
