"""What a live view shows: frames joined with their results by (camera, seq), per-camera
rates, and the overlay data a browser draws. Pure logic with bounded memory; the Kafka
reader and the web server live in ``services/view``.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from vlm_core.contracts.frame import Encoding, Frame, encode_image
from vlm_core.contracts.result import Result
from vlm_core.pipeline import CameraPolicy, CameraRouting, Point, Units
from vlm_core.stream.accuracy import SCORED_TASKS, AccuracyReading, LiveAccuracy

MIME_TYPES = {Encoding.JPEG: "image/jpeg", Encoding.PNG: "image/png"}


@dataclass(frozen=True)
class LiveFrame:
    """One camera frame with its result: what a viewer is sent."""

    camera_id: str
    seq: int
    capture_ts_ms: int
    image: bytes = field(repr=False)
    mime: str
    result: Result
    #: Class colours of the segmentation masks as a PNG with alpha, the frame's size; None without masks.
    mask_png: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class JoinCounts:
    joined: int
    #: Frames that left the window with no result: dropped by the processor, or not yet processed.
    frames_unmatched: int
    #: Results whose frame was not (or no longer) in the window.
    results_unmatched: int


@dataclass
class CameraStats:
    """One camera's rates over the last ``window_s`` seconds of wall time."""

    window_s: float = 5.0
    arrivals: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=1000))
    joined: int = 0
    unmatched: int = 0
    models: dict[str, str] = field(default_factory=dict)

    def add(self, now: float, result: Result) -> None:
        self.arrivals.append((now, result.latency_ms))
        self.joined += 1
        for task, output in result.outputs.items():
            self.models[task.value] = f"{output.model.name}@{output.model.version}"

    def summary(self, now: float) -> dict[str, Any]:
        recent = [lat for ts, lat in self.arrivals if now - ts <= self.window_s]
        return {
            "fps": round(len(recent) / self.window_s, 2),
            "latency_p50_ms": float(np.percentile(recent, 50)) if recent else None,
            "latency_p99_ms": float(np.percentile(recent, 99)) if recent else None,
            "frames": self.joined,
            "unmatched": self.unmatched,
            "models": dict(self.models),
        }


class FrameJoin:
    """Frames wait, bounded per camera and in bytes overall, until their result arrives.
    When a bound is hit the oldest frame of the longest queue leaves, counted as unmatched;
    so does every older frame of a camera once a newer one is joined (it will not be shown)."""

    def __init__(
        self,
        *,
        frames_per_camera: int = 64,
        max_bytes: int = 64 * 1024 * 1024,
        max_cameras: int = 256,
        clock: Callable[[], float] = time.monotonic,
        render_masks: bool = True,
    ) -> None:
        self.frames_per_camera = frames_per_camera
        self.max_bytes = max_bytes
        self.max_cameras = max_cameras
        self.clock = clock
        self.render_masks = render_masks
        #: Per camera, its waiting frames by seq in arrival order.
        self._waiting: dict[str, OrderedDict[int, Frame]] = {}
        self._bytes = 0
        self.stats: OrderedDict[str, CameraStats] = OrderedDict()
        self._joined = self._frames_unmatched = self._results_unmatched = 0
        #: Per scored task, the live accuracy of cameras whose frames carry ground truth.
        self.accuracy = {task: LiveAccuracy(task, max_cameras=max_cameras, clock=clock) for task in SCORED_TASKS}

    @property
    def bytes_waiting(self) -> int:
        return self._bytes

    @property
    def frames_waiting(self) -> int:
        return sum(len(q) for q in self._waiting.values())

    def accuracy_of(self, camera_id: str) -> dict[str, AccuracyReading]:
        """The camera's live accuracy by task name; empty when its frames carry no truth."""
        readings = {task.value: live.reading(camera_id) for task, live in self.accuracy.items()}
        return {task: reading for task, reading in readings.items() if reading is not None}

    def counts(self) -> JoinCounts:
        return JoinCounts(self._joined, self._frames_unmatched, self._results_unmatched)

    def camera(self, camera_id: str) -> CameraStats:
        stats = self.stats.get(camera_id)
        if stats is None:
            if len(self.stats) >= self.max_cameras:  # the camera heard from least recently goes
                forgotten, _stats = self.stats.popitem(last=False)
                for frame in self._waiting.pop(forgotten, {}).values():
                    self._bytes -= len(frame.data)
            stats = self.stats[camera_id] = CameraStats()
        else:
            self.stats.move_to_end(camera_id)
        return stats

    def add_frame(self, frame: Frame) -> None:
        self.camera(frame.camera_id)
        queue = self._waiting.setdefault(frame.camera_id, OrderedDict())
        if frame.seq in queue:  # the same frame read twice (a producer retry)
            return
        queue[frame.seq] = frame
        self._bytes += len(frame.data)
        if len(queue) > self.frames_per_camera:
            self._evict_oldest(frame.camera_id)
        while self._bytes > self.max_bytes:
            self._evict_oldest(max(self._waiting, key=lambda c: len(self._waiting[c])))

    def add_result(self, result: Result) -> LiveFrame | None:
        queue = self._waiting.get(result.camera_id)
        frame = None if queue is None else queue.pop(result.seq, None)
        if frame is None or queue is None:
            self._results_unmatched += 1
            return None
        self._bytes -= len(frame.data)
        while queue and next(iter(queue)) < result.seq:
            self._evict_oldest(result.camera_id)
        if not queue:
            self._waiting.pop(result.camera_id, None)
        self._joined += 1
        self.camera(result.camera_id).add(self.clock(), result)
        if frame.truth is not None:
            for accuracy in self.accuracy.values():
                accuracy.add(result, frame.truth)
        image, mime = browser_image(frame)
        masks = segmentation_overlay(result) if self.render_masks else None
        return LiveFrame(frame.camera_id, frame.seq, frame.capture_ts_ms, image, mime, result, masks)

    def _evict_oldest(self, camera_id: str) -> None:
        queue = self._waiting[camera_id]
        _seq, frame = queue.popitem(last=False)
        self._bytes -= len(frame.data)
        self._frames_unmatched += 1
        self.stats[camera_id].unmatched += 1
        if not queue:
            del self._waiting[camera_id]


def browser_image(frame: Frame) -> tuple[bytes, str]:
    """The frame's bytes as a browser shows them: JPEG and PNG pass through, raw pixels are
    encoded to JPEG once."""
    mime = MIME_TYPES.get(frame.encoding)
    if mime is not None:
        return frame.data, mime
    return encode_image(frame.decode(), Encoding.JPEG), MIME_TYPES[Encoding.JPEG]


#: Distinct colours for class masks (BGR), cycled by class id.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (56, 56, 255), (151, 157, 255), (31, 112, 255), (29, 178, 255), (49, 210, 207), (10, 249, 72),
    (23, 204, 146), (134, 219, 61), (52, 147, 26), (187, 212, 0), (168, 153, 44), (255, 194, 0),
    (147, 69, 52), (255, 115, 100), (236, 24, 0), (255, 56, 132), (133, 0, 82), (255, 56, 203),
)  # fmt: skip


def segmentation_overlay(result: Result, *, alpha: int = 110) -> bytes | None:
    """The result's class masks, coloured by class, as one RGBA PNG (transparent where no
    class is): decoded once per frame here, shared by every viewer."""
    segmentation = result.segmentation
    if segmentation is None or not segmentation.classes:
        return None
    first = segmentation.classes[0].mask
    overlay = np.zeros((first.height, first.width, 4), np.uint8)
    for cls in segmentation.classes:
        mask = cls.mask.decode()
        if mask.shape != overlay.shape[:2]:
            mask = cv2.resize(mask.astype(np.uint8), overlay.shape[1::-1], interpolation=cv2.INTER_NEAREST) > 0
        overlay[mask] = (*PALETTE[cls.class_id % len(PALETTE)], alpha)
    ok, png = cv2.imencode(".png", overlay)
    return png.tobytes() if ok else None


def regions(policy: CameraPolicy) -> dict[str, list[dict[str, Any]]]:
    """A camera's zones and lines as the view draws them (units say how to scale the points)."""

    def points(pts: Iterable[Point]) -> list[list[float]]:
        return [[float(x), float(y)] for x, y in pts]

    zones = [
        {"name": z.name, "points": points(z.polygon), "normalized": z.units is Units.NORMALIZED}
        for z in policy.analytics.zones
    ]
    lines = [
        {"name": ln.name, "points": points(ln.points), "normalized": ln.units is Units.NORMALIZED}
        for ln in policy.analytics.lines
    ]
    return {"zones": zones, "lines": lines}


def camera_regions(routing: CameraRouting, camera_ids: Iterable[str]) -> dict[str, dict[str, list[dict[str, Any]]]]:
    return {camera: regions(routing.policy_for(camera)) for camera in camera_ids}
