"""One Kafka reader for every viewer of the live view.

A thread reads the frames, results and events topics from their ends, joins frames with
results (``vlm_core.stream.live.FrameJoin``) and hands each joined frame to the event
loop, where every viewer keeps only the newest frame per camera it has not sent yet. A
slow or stalled viewer therefore skips frames, costs at most one frame per camera, and
never holds up the reader or the other viewers.
"""

from __future__ import annotations

import asyncio
import json
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from vlm_core.config import Topics
from vlm_core.contracts.event import Event
from vlm_core.contracts.frame import Frame
from vlm_core.contracts.result import Result
from vlm_core.errors import VlmError
from vlm_core.pipeline import CameraRouting
from vlm_core.stream.live import FrameJoin, LiveFrame, regions

#: Events a new viewer is shown at once, and the most a viewer has waiting.
EVENTS_KEPT = 50
#: Seconds between attempts to reach the broker.
RETRY_S = 2.0


class ViewMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.viewers = Gauge("vlm_view_viewers", "Connected live-view viewers", registry=self.registry)
        self.joined = Counter(
            "vlm_view_frames_joined", "Frames joined with their result", ["camera_id"], registry=self.registry
        )
        self.unmatched = Counter(
            "vlm_view_frames_unmatched",
            "Frames that left the join window without a result (dropped by the processor or late)",
            registry=self.registry,
        )
        self.sent = Counter("vlm_view_frames_sent", "Frames sent to viewers", registry=self.registry)
        self.skipped = Counter(
            "vlm_view_frames_skipped",
            "Frames a viewer never got because it had not taken the previous one (a slow viewer)",
            registry=self.registry,
        )
        self.bytes_waiting = Gauge(
            "vlm_view_join_bytes", "Image bytes of frames waiting for their result", registry=self.registry
        )
        self.accuracy = Gauge(
            "vlm_view_live_accuracy",
            "Accuracy over a camera's last 100 frames against the ground truth its frames carry "
            "(mAP@.5 for detection, top-1 accuracy for classification)",
            ["camera_id", "task", "metric"],
            registry=self.registry,
        )
        self.read_errors = Counter(
            "vlm_view_records_invalid", "Records the view could not parse, by topic", ["topic"], registry=self.registry
        )


@dataclass(eq=False)
class Viewer:
    """One connected browser: the newest unsent frame per camera, and unsent events."""

    #: Per camera, the newest joined frame as its WebSocket message (see ``frame_message``).
    frames: dict[str, bytes] = field(default_factory=dict)
    events: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=EVENTS_KEPT))
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    sent: int = 0
    skipped: int = 0

    def offer(self, camera_id: str, message: bytes) -> bool:
        """Keep ``message`` as this camera's next; True when it replaced an unsent one."""
        replaced = camera_id in self.frames
        self.frames[camera_id] = message
        if replaced:
            self.skipped += 1
        self.wake.set()
        return replaced

    def take(self) -> tuple[list[bytes], list[dict[str, Any]]]:
        frames, events = list(self.frames.values()), list(self.events)
        self.frames.clear()
        self.events.clear()
        self.wake.clear()
        return frames, events


def frame_message(frame: LiveFrame) -> bytes:
    """A binary WebSocket message: a 4-byte big-endian header length, the JSON header
    (the result, without mask run lengths: the mask comes as a PNG), the image, the mask."""
    doc = frame.result.to_json()
    segmentation = doc["tasks"].get("segmentation")
    if segmentation is not None:
        for cls in segmentation.get("classes", []):
            cls.pop("mask", None)
    mask = frame.mask_png or b""
    header = json.dumps(
        {
            "camera_id": frame.camera_id,
            "seq": frame.seq,
            "mime": frame.mime,
            "image_bytes": len(frame.image),
            "mask_bytes": len(mask),
            "result": doc,
        },
        separators=(",", ":"),
    ).encode()
    return struct.pack(">I", len(header)) + header + frame.image + mask


class LiveHub:
    def __init__(
        self,
        bootstrap: str,
        topics: Topics,
        routing: CameraRouting,
        *,
        join: FrameJoin | None = None,
        metrics: ViewMetrics | None = None,
    ) -> None:
        self.bootstrap, self.topics, self.routing = bootstrap, topics, routing
        self.join = join or FrameJoin()
        self.metrics = metrics or ViewMetrics()
        self.viewers: set[Viewer] = set()
        self.recent_events: deque[dict[str, Any]] = deque(maxlen=EVENTS_KEPT)
        self._lock = threading.Lock()  # the join's stats: written by the reader, read by requests
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.error: str | None = None
        self.started = time.monotonic()

    # -- the event loop's side -------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.Thread(target=self._run, name="view-reader", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def subscribe(self) -> Viewer:
        viewer = Viewer()
        viewer.events.extend(self.recent_events)
        self.viewers.add(viewer)
        self.metrics.viewers.set(len(self.viewers))
        return viewer

    def unsubscribe(self, viewer: Viewer) -> None:
        self.viewers.discard(viewer)
        self.metrics.viewers.set(len(self.viewers))

    def _dispatch_frame(self, camera_id: str, message: bytes) -> None:
        for viewer in self.viewers:
            if viewer.offer(camera_id, message):
                self.metrics.skipped.inc()

    def _dispatch_event(self, event: dict[str, Any]) -> None:
        self.recent_events.append(event)
        for viewer in self.viewers:
            viewer.events.append(event)
            viewer.wake.set()

    def state(self) -> dict[str, Any]:
        """Per camera: rates, models, zones and lines; the page polls it."""
        now = time.monotonic()
        with self._lock:
            cameras = {
                camera: {
                    **stats.summary(now),
                    **regions(self.routing.policy_for(camera)),
                    "accuracy": {task: r.to_json() for task, r in self.join.accuracy_of(camera).items()},
                }
                for camera, stats in self.join.stats.items()
            }
            counts = self.join.counts()
        for camera, doc in cameras.items():
            for task, reading in doc["accuracy"].items():
                self.metrics.accuracy.labels(camera_id=camera, task=task, metric=reading["metric"]).set(
                    reading["value"]
                )
        return {
            "cameras": cameras,
            "viewers": len(self.viewers),
            "joined": counts.joined,
            "unmatched": counts.frames_unmatched,
            "error": self.error,
            "uptime_s": round(now - self.started, 1),
        }

    # -- the reader thread --------------------------------------------------------------
    def _run(self) -> None:
        """Read until stopped; a lost or unreachable broker is shown on the page and retried."""
        while not self._stop.is_set():
            try:
                self._read()
            except Exception as exc:
                self.error = f"{type(exc).__name__}: {exc}"
                self._stop.wait(RETRY_S)

    def _read(self) -> None:
        from kafka import TopicPartition

        from services.kafka_io import consumer

        reader = consumer(self.bootstrap, group_id=None)
        try:
            partitions = [
                TopicPartition(topic, p)
                for topic in (self.topics.frames, self.topics.results, self.topics.events)
                for p in sorted(reader.partitions_for_topic(topic) or [])
            ]
            if not partitions:
                raise VlmError(f"the topics {self.topics.frames} and {self.topics.results} do not exist yet")
            reader.assign(partitions)
            reader.seek_to_end(*partitions)
            self.error = None
            handlers: dict[str, Callable[[Any], None]] = {
                self.topics.frames: self._on_frame,
                self.topics.results: self._on_result,
                self.topics.events: self._on_event,
            }
            while not self._stop.is_set():
                for tp, records in reader.poll(timeout_ms=200, max_records=500).items():
                    handle = handlers[tp.topic]
                    for record in records:
                        try:
                            handle(record)
                        except (VlmError, ValueError, KeyError, TypeError):
                            self.metrics.read_errors.labels(topic=tp.topic).inc()
                self.metrics.bytes_waiting.set(self.join.bytes_waiting)
        finally:
            reader.close()

    def _on_frame(self, record: Any) -> None:
        frame = Frame.from_kafka(record.key, record.value, record.headers)
        with self._lock:
            before = self.join.counts().frames_unmatched
            self.join.add_frame(frame)
            self.metrics.unmatched.inc(self.join.counts().frames_unmatched - before)

    def _on_result(self, record: Any) -> None:
        result = Result.from_bytes(record.value, validate=False)
        with self._lock:
            before = self.join.counts().frames_unmatched
            joined = self.join.add_result(result)
            self.metrics.unmatched.inc(self.join.counts().frames_unmatched - before)
        if joined is not None and self._loop is not None:
            self.metrics.joined.labels(camera_id=joined.camera_id).inc()
            # Serialised once here, in the reader thread, for every viewer.
            self._loop.call_soon_threadsafe(self._dispatch_frame, joined.camera_id, frame_message(joined))

    def _on_event(self, record: Any) -> None:
        event = Event.from_bytes(record.value, validate=False).to_json()
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._dispatch_event, event)
