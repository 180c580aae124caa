from __future__ import annotations

import numpy as np
import pytest

from vlm_core.contracts.frame import Encoding, Frame
from vlm_core.contracts.result import (
    ClassMask,
    Detection,
    Detections,
    ModelRef,
    Result,
    Segmentation,
)
from vlm_core.contracts.rle import RLE
from vlm_core.contracts.task import Task
from vlm_core.pipeline import CameraRouting
from vlm_core.stream.live import FrameJoin, camera_regions, segmentation_overlay

MODEL = ModelRef("m", "1")


def frame(camera: str, seq: int, size: int = 100) -> Frame:
    return Frame(camera, seq, 1_000 + seq, 8, 8, Encoding.JPEG, b"\xff\xd8" + bytes(size - 2))


def result(camera: str, seq: int, *, outputs: dict | None = None) -> Result:
    return Result(camera, seq, 1_000 + seq, 1_050 + seq, 8, 8, outputs or {})


def test_a_result_joins_its_frame_and_carries_the_bytes_through() -> None:
    join = FrameJoin()
    join.add_frame(frame("a", 1))
    live = join.add_result(
        result("a", 1, outputs={Task.DETECTION: Detections(MODEL, (Detection((1, 1, 4, 4), "x", 0, 0.9, 7),))})
    )
    assert live is not None
    assert live.image == frame("a", 1).data and live.mime == "image/jpeg"
    assert join.counts().joined == 1 and join.bytes_waiting == 0
    assert join.stats["a"].models == {"detection": "m@1"}


def test_a_result_without_its_frame_is_counted_not_shown() -> None:
    join = FrameJoin()
    assert join.add_result(result("a", 1)) is None
    assert join.counts().results_unmatched == 1


def test_older_frames_leave_once_a_newer_one_is_joined() -> None:
    join = FrameJoin()
    for seq in range(5):
        join.add_frame(frame("a", seq))
    join.add_frame(frame("b", 0))
    assert join.add_result(result("a", 3)) is not None
    assert join.counts().frames_unmatched == 3  # a#0..2 will never be shown
    assert join.frames_waiting == 2  # a#4 and b#0
    assert join.stats["a"].unmatched == 3


def test_memory_is_bounded_per_camera_in_bytes_and_in_cameras() -> None:
    join = FrameJoin(frames_per_camera=4, max_bytes=1_000, max_cameras=3)
    for seq in range(50):
        join.add_frame(frame("a", seq))
    assert join.frames_waiting == 4
    for camera in "bcdefg":
        for seq in range(4):
            join.add_frame(frame(camera, seq))
    assert join.bytes_waiting <= 1_000
    assert len(join.stats) == 3
    assert join.bytes_waiting == sum(100 for _ in range(join.frames_waiting))


def test_a_duplicate_frame_is_kept_once() -> None:
    join = FrameJoin()
    join.add_frame(frame("a", 1))
    join.add_frame(frame("a", 1))
    assert join.frames_waiting == 1 and join.bytes_waiting == 100


def test_raw_frames_are_encoded_for_the_browser() -> None:
    raw = Frame("a", 1, 1, 4, 2, Encoding.RAW, np.zeros((2, 4, 3), np.uint8).tobytes())
    join = FrameJoin()
    join.add_frame(raw)
    live = join.add_result(result("a", 1))
    assert live is not None and live.mime == "image/jpeg" and live.image[:2] == b"\xff\xd8"


def test_masks_become_one_coloured_png_with_alpha() -> None:
    import cv2

    mask = np.zeros((6, 8), bool)
    mask[2:4, 2:6] = True
    seg = Segmentation(MODEL, (ClassMask(3, "road", 0.2, RLE.encode(mask)),))
    png = segmentation_overlay(result("a", 1, outputs={Task.SEGMENTATION: seg}))
    assert png is not None
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert image.shape == (6, 8, 4)
    assert (image[..., 3] > 0).sum() == mask.sum()
    assert segmentation_overlay(result("a", 1)) is None


def test_regions_come_from_the_camera_routing() -> None:
    routing = CameraRouting.model_validate(
        {
            "overrides": {
                "cam": {
                    "tasks": ["detection"],
                    "tracking": {},
                    "analytics": {
                        "lines": [{"name": "l", "points": [[0.5, 0], [0.5, 1]], "units": "normalized"}],
                        "zones": [{"name": "z", "polygon": [[0, 0], [10, 0], [10, 10]]}],
                    },
                }
            }
        }
    )
    regions = camera_regions(routing, ["cam", "other"])
    assert regions["cam"]["lines"] == [{"name": "l", "points": [[0.5, 0.0], [0.5, 1.0]], "normalized": True}]
    assert regions["cam"]["zones"][0]["normalized"] is False
    assert regions["other"] == {"zones": [], "lines": []}


@pytest.mark.parametrize("window", [1.0, 5.0])
def test_fps_counts_results_in_the_window(window: float) -> None:
    now = [0.0]
    join = FrameJoin(clock=lambda: now[0])
    for seq in range(20):
        now[0] = seq * 0.5
        join.add_frame(frame("a", seq))
        join.add_result(result("a", seq))
    join.stats["a"].window_s = window
    summary = join.stats["a"].summary(now[0])
    assert summary["fps"] == pytest.approx((int(window / 0.5) + 1) / window)
    assert summary["latency_p50_ms"] == 50
