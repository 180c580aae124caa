"""The tracking stage: per camera, a tracker and its zones and lines, with state that
survives the process.

It runs in the StreamProcessor after the models, on each frame in partition order (a
camera is keyed to one partition, so one owner sees its frames in order). For each frame
it gives the detections their track ids and returns the frame's events.

State lives in Kafka, as a changelog (Kafka Streams' pattern): with every batch, each
camera whose state changed has it written to ``vlm.tracks.state`` (compacted, keyed by
camera, co-partitioned with the frames topic), and that write gates the batch's commit.
A new owner of a partition loads its cameras' states before it processes a frame.

At least once means a frame can be processed again: after a retry, or by a new owner whose
loaded state was written after the frame (a process can die between its state write and
its offset commit). The last ``replay_window`` frames' ids and events are part of the
state, so a frame seen again gets the same ids and the same events (events carry a stable
``event_id``), and counts never move twice.

A state record that cannot be read (garbage, an unknown version) starts that camera
fresh: counted, logged, never a crash. Its ids then start at the current Unix time in
milliseconds, above any id its earlier runs could have handed out (that would take more
than a thousand new tracks a second), so an id is still never reused.
"""

from __future__ import annotations

import enum
import json
import logging
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np

from vlm_core import metrics as m
from vlm_core.contracts.dlq import FrameRef
from vlm_core.contracts.event import Event
from vlm_core.contracts.frame import Frame
from vlm_core.contracts.result import Detection, Detections, Result, TrackingInfo
from vlm_core.contracts.schema import strict_json
from vlm_core.pipeline import CameraPolicy, CameraRouting
from vlm_core.stream.analytics import Occurrence, SceneAnalytics, TrackedObject
from vlm_core.stream.ports import StateRecord
from vlm_core.stream.tracking import ByteTracker, Observation, Track, box_iou

log = logging.getLogger(__name__)

STATE_VERSION = 1
#: Leading bytes of a state record: a version check before any parsing.
STATE_MAGIC = b"vlmtrk"
#: A replayed box keeps its first id when it overlaps the recorded box this much.
_REPLAY_IOU = 0.9


class RestartReason(str, enum.Enum):
    UNREADABLE = "unreadable"  # not a state record at all (garbage, truncated)
    VERSION = "version"  # a state record of a version this build does not read
    INVALID = "invalid"  # the right version, but its content does not hold together
    ERROR = "error"  # the stage failed on one of the camera's frames


#: What one detection got: its track id (None: unconfirmed) and the class it is reported
#: with (its track's, once it has one).
Assigned = tuple[int | None, int]


@dataclass(frozen=True)
class _Seen:
    """What a recent frame got: its boxes (with the detector's classes) and what each was
    assigned, and its events."""

    capture_ts_ms: int
    boxes: tuple[tuple[float, float, float, float], ...]
    class_ids: tuple[int, ...]
    assigned: tuple[Assigned, ...]
    events: tuple[Event, ...]


@dataclass
class _Camera:
    policy: CameraPolicy
    tracker: ByteTracker
    analytics: SceneAnalytics
    partition: int
    last_seq: int | None = None
    last_capture_ts_ms: int | None = None
    recent: OrderedDict[int, _Seen] = field(default_factory=OrderedDict)
    last_active_s: float = 0.0
    released: bool = False
    #: Class names by id, as the detector reported them (a track's class may be absent
    #: from a frame's boxes).
    labels: dict[int, str] = field(default_factory=dict)

    def label(self, class_id: int) -> str:
        return self.labels.get(class_id, str(class_id))


def encode_state(camera: _Camera) -> bytes:
    doc = {
        "version": STATE_VERSION,
        "tracker": camera.tracker.to_state(),
        "analytics": camera.analytics.to_state(),
        "last_seq": camera.last_seq,
        "last_capture_ts_ms": camera.last_capture_ts_ms,
        "recent": [[seq, _seen_to_json(seen)] for seq, seen in camera.recent.items()],
        "labels": {str(c): label for c, label in camera.labels.items()},
    }
    return STATE_MAGIC + bytes([STATE_VERSION]) + zlib.compress(json.dumps(doc, separators=(",", ":")).encode(), 1)


class StateReadError(Exception):
    def __init__(self, reason: RestartReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def decode_state(value: bytes) -> dict[str, Any]:
    if not value.startswith(STATE_MAGIC) or len(value) <= len(STATE_MAGIC):
        raise StateReadError(RestartReason.UNREADABLE, "not a vlm tracker state record")
    version = value[len(STATE_MAGIC)]
    if version != STATE_VERSION:
        raise StateReadError(RestartReason.VERSION, f"state version {version}; this build reads {STATE_VERSION}")
    try:
        doc = strict_json(zlib.decompress(value[len(STATE_MAGIC) + 1 :]))
    except (zlib.error, ValueError) as exc:
        raise StateReadError(RestartReason.UNREADABLE, f"state body does not decode: {exc}") from None
    if not isinstance(doc, dict) or doc.get("version") != STATE_VERSION:
        raise StateReadError(RestartReason.INVALID, "state body is not a version-1 document")
    return doc


class TrackingStage:
    name = "tracking"

    def __init__(
        self,
        routing: CameraRouting,
        *,
        metrics: m.MetricsSink | None = None,
        min_replay_window: int = 0,
        clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.routing = routing
        self.metrics = metrics or m.MetricsSink()
        self.min_replay_window = min_replay_window
        self.clock_ms = clock_ms
        self.monotonic = monotonic
        self.cameras: dict[str, _Camera] = {}
        self._dirty: set[str] = set()
        #: Where a camera starts when its state was unreadable: its ids begin here.
        self._fresh_ids: dict[str, int] = {}
        #: Size of each camera's last written state record (read from other threads).
        self._state_sizes: dict[str, int] = {}

    def tracks(self, camera_id: str) -> bool:
        return self.routing.policy_for(camera_id).tracking is not None

    # -- per frame --------------------------------------------------------------------------
    def apply(self, frame: Frame, ref: FrameRef, result: Result) -> tuple[Result, tuple[Event, ...]]:
        """The result with its detections' track ids, and the frame's events."""
        detections = result.detection
        if detections is None or not self.tracks(frame.camera_id):
            return result, ()
        try:
            return self._apply(frame, ref, result, detections)
        except Exception:  # never lose the frame's result to a tracking bug: it goes out untracked
            log.exception("tracking failed on %s; camera %r starts fresh", ref, frame.camera_id)
            self._restart(frame.camera_id, ref.partition, RestartReason.ERROR)
            return result, ()

    def _apply(
        self, frame: Frame, ref: FrameRef, result: Result, detections: Detections
    ) -> tuple[Result, tuple[Event, ...]]:
        camera = self._camera(frame.camera_id, ref.partition)
        camera.last_active_s = self.monotonic()
        if camera.released:
            camera.released = False
        for det in detections.detections:
            camera.labels.setdefault(det.class_id, det.label)
        seen = self._seen_before(camera, frame)
        if seen is not None:
            assigned = _replayed(seen, detections.detections)
            return self._tracked(result, detections, assigned, camera, replayed=True), seen.events
        if camera.last_seq is not None and frame.seq <= camera.last_seq:
            # Older than the replay window remembers: its ids are unknown, it moves nothing.
            self.metrics.inc(m.TRACKING_REPLAYS, camera_id=frame.camera_id, outcome="unknown")
            untracked = tuple((None, d.class_id) for d in detections.detections)
            return self._tracked(result, detections, untracked, camera, True), ()
        observations = [Observation(d.box, d.class_id, d.score) for d in detections.detections]
        step = camera.tracker.update(observations, frame.capture_ts_ms)
        assigned = tuple(
            (tid, step.matched[i].class_id if i in step.matched else d.class_id)
            for i, (d, tid) in enumerate(zip(detections.detections, step.track_ids, strict=True))
        )
        label = camera.label
        objects = [_tracked_object(t, label(t.class_id)) for _i, t in sorted(step.matched.items())]
        ended = [_tracked_object(t, label(t.class_id)) for t in step.ended]
        occurrences = camera.analytics.update(objects, ended, frame.capture_ts_ms, frame.width, frame.height)
        events = tuple(self._event(frame, ref, result, o, i) for i, o in enumerate(occurrences))
        camera.last_seq = frame.seq
        camera.last_capture_ts_ms = frame.capture_ts_ms
        camera.recent[frame.seq] = _Seen(
            frame.capture_ts_ms,
            tuple(d.box for d in detections.detections),
            tuple(d.class_id for d in detections.detections),
            assigned,
            events,
        )
        window = max(camera.policy.tracking.replay_window if camera.policy.tracking else 0, self.min_replay_window)
        while len(camera.recent) > window:
            camera.recent.popitem(last=False)
        self._dirty.add(frame.camera_id)
        self._report(frame.camera_id, camera, events)
        return self._tracked(result, detections, assigned, camera, replayed=False), events

    def _seen_before(self, camera: _Camera, frame: Frame) -> _Seen | None:
        seen = camera.recent.get(frame.seq)
        if seen is not None and seen.capture_ts_ms == frame.capture_ts_ms:
            self.metrics.inc(m.TRACKING_REPLAYS, camera_id=frame.camera_id, outcome="replayed")
            return seen
        if (
            camera.last_seq is not None
            and frame.seq <= camera.last_seq
            and camera.last_capture_ts_ms is not None
            and frame.capture_ts_ms > camera.last_capture_ts_ms
        ):
            # A lower seq with a later capture time: the source restarted its numbering.
            camera.last_seq = None
            camera.recent.clear()
        return None

    def _tracked(
        self,
        result: Result,
        detections: Detections,
        assigned: Sequence[Assigned],
        camera: _Camera,
        replayed: bool,
    ) -> Result:
        """The detections with their track ids; a tracked one is reported with its track's
        class (the vote of its first boxes), which a flicker of the detector cannot change."""
        tracked = Detections(
            detections.model,
            tuple(
                replace(d, track_id=tid)
                if cls == d.class_id
                else replace(d, track_id=tid, class_id=cls, label=camera.label(cls))
                for d, (tid, cls) in zip(detections.detections, assigned, strict=True)
            ),
        )
        outputs = {**result.outputs, **{task: tracked for task, out in result.outputs.items() if out is detections}}
        info = TrackingInfo(camera.tracker.settings.tracker.value, camera.tracker.active, replayed)
        return replace(result, outputs=outputs, tracking=info)

    def _event(self, frame: Frame, ref: FrameRef, result: Result, o: Occurrence, index: int) -> Event:
        return Event(
            camera_id=frame.camera_id,
            seq=frame.seq,
            capture_ts_ms=frame.capture_ts_ms,
            frame=ref,
            models={str(task): out.model for task, out in result.outputs.items()},
            index=index,
            **{f.name: getattr(o, f.name) for f in fields(o)},
        )

    def _report(self, camera_id: str, camera: _Camera, events: Sequence[Event]) -> None:
        try:
            self.metrics.set(m.ACTIVE_TRACKS, camera.tracker.active, camera_id=camera_id)
            for event in events:
                self.metrics.inc(m.EVENTS, camera_id=camera_id, type=event.type.value)
            for zone, count in camera.analytics.occupancy().items():
                self.metrics.set(m.ZONE_OCCUPANCY, count, camera_id=camera_id, zone=zone)
        except Exception:  # metrics never fail a frame
            log.warning("tracking metrics of %r not recorded", camera_id, exc_info=True)

    # -- cameras ----------------------------------------------------------------------------
    def _camera(self, camera_id: str, partition: int) -> _Camera:
        camera = self.cameras.get(camera_id)
        if camera is None:
            camera = self._fresh(camera_id, partition, self._fresh_ids.pop(camera_id, 1))
            self.cameras[camera_id] = camera
        camera.partition = partition
        return camera

    def _fresh(self, camera_id: str, partition: int, next_id: int) -> _Camera:
        policy = self.routing.policy_for(camera_id)
        assert policy.tracking is not None
        return _Camera(
            policy,
            ByteTracker(policy.tracking, next_id=next_id),
            SceneAnalytics(policy.analytics),
            partition,
            last_active_s=self.monotonic(),
        )

    def _restart(self, camera_id: str, partition: int, reason: RestartReason) -> None:
        try:
            self.metrics.inc(m.TRACKING_STATE_RESTARTS, camera_id=camera_id, reason=reason.value)
        except Exception:
            log.warning("restart of %r not counted", camera_id, exc_info=True)
        old = self.cameras.pop(camera_id, None)
        if old is not None:  # its counter is known: ids go on from it
            self.cameras[camera_id] = self._fresh(camera_id, partition, old.tracker.next_id)
            self._dirty.add(camera_id)
        else:  # its counter was in the unreadable record
            self._fresh_ids[camera_id] = self.clock_ms()

    # -- state ------------------------------------------------------------------------------
    def checkpoint(self) -> list[StateRecord]:
        """The state records of the cameras changed since the last checkpoint. Cameras
        idle for their ``idle_release_s`` release their tracks here (and are written once
        more, so the topic does not hold tracks that no longer exist)."""
        now = self.monotonic()
        for camera_id, camera in self.cameras.items():
            settings = camera.policy.tracking
            if settings is not None and not camera.released and now - camera.last_active_s > settings.idle_release_s:
                camera.tracker.release()
                camera.analytics.release()
                camera.recent.clear()
                camera.released = True
                self._dirty.add(camera_id)
                self._report(camera_id, camera, ())
        records = []
        for camera_id in sorted(self._dirty):
            dirty = self.cameras.get(camera_id)
            if dirty is not None:
                records.append(StateRecord(camera_id, dirty.partition, encode_state(dirty)))
                self._state_sizes[camera_id] = len(records[-1].value or b"")
        self._dirty.clear()
        return records

    def reset(self) -> None:
        """Forget every camera (partitions were reassigned; states are loaded again)."""
        self.cameras.clear()
        self._state_sizes.clear()
        self._dirty.clear()
        self._fresh_ids.clear()

    def load(self, records: Iterable[StateRecord]) -> int:
        """Take over cameras from their latest state records; returns how many were loaded.
        A record that cannot be read starts its camera fresh (counted)."""
        loaded = 0
        for record in records:
            if not self.tracks(record.camera_id):
                continue
            if record.value is None:  # a tombstone: the camera's state was deleted
                self.cameras.pop(record.camera_id, None)
                continue
            try:
                self.cameras[record.camera_id] = self._restore(record)
                loaded += 1
            except StateReadError as exc:
                log.warning("tracker state of camera %r: %s; starting it fresh", record.camera_id, exc)
                self._restart(record.camera_id, record.partition, exc.reason)
            except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
                log.warning("tracker state of camera %r is invalid (%r); starting it fresh", record.camera_id, exc)
                self._restart(record.camera_id, record.partition, RestartReason.INVALID)
        return loaded

    def _restore(self, record: StateRecord) -> _Camera:
        assert record.value is not None
        doc = decode_state(record.value)
        policy = self.routing.policy_for(record.camera_id)
        assert policy.tracking is not None
        camera = _Camera(
            policy,
            ByteTracker.from_state(policy.tracking, doc["tracker"]),
            SceneAnalytics.from_state(policy.analytics, doc["analytics"]),
            record.partition,
            last_seq=doc["last_seq"],
            last_capture_ts_ms=doc["last_capture_ts_ms"],
            recent=OrderedDict((int(seq), _seen_from_json(seen, record.camera_id)) for seq, seen in doc["recent"]),
            last_active_s=self.monotonic(),
            labels={int(c): str(label) for c, label in doc["labels"].items()},
        )
        self._report(record.camera_id, camera, ())
        return camera

    def state_bytes(self) -> int:
        """Total size of the cameras' last written state records (the soak watches it).
        Safe from another thread (the replica's stats): it reads a snapshot of sizes,
        never the tracks the processor thread is changing."""
        return sum(list(self._state_sizes.values()))


def _tracked_object(track: Track, label: str) -> TrackedObject:
    assert track.track_id is not None
    return TrackedObject(track.track_id, track.class_id, label, track.box)


def _replayed(seen: _Seen, detections: Sequence[Detection]) -> tuple[Assigned, ...]:
    """What a frame's detections got the first time, matched box by box (a model may return
    its boxes in another order, or slightly different ones after a reload)."""
    if not detections or not seen.boxes:
        return tuple((None, d.class_id) for d in detections)
    iou = box_iou(np.array([d.box for d in detections], np.float64), np.array(seen.boxes, np.float64))
    assigned: list[Assigned] = []
    taken: set[int] = set()
    for i, det in enumerate(detections):
        best = int(np.argmax(iou[i]))
        ok = iou[i, best] >= _REPLAY_IOU and seen.class_ids[best] == det.class_id and best not in taken
        assigned.append(seen.assigned[best] if ok else (None, det.class_id))
        if ok:
            taken.add(best)
    return tuple(assigned)


def _seen_to_json(seen: _Seen) -> dict[str, Any]:
    return {
        "capture_ts_ms": seen.capture_ts_ms,
        "boxes": [[round(v, 2) for v in box] for box in seen.boxes],
        "class_ids": list(seen.class_ids),
        "assigned": [list(a) for a in seen.assigned],
        "events": [e.to_json() for e in seen.events],
    }


def _seen_from_json(doc: dict[str, Any], camera_id: str) -> _Seen:
    events = tuple(Event.from_json(e, validate=False) for e in doc["events"])
    if any(e.camera_id != camera_id for e in events):
        raise ValueError("a recorded event names another camera")
    return _Seen(
        int(doc["capture_ts_ms"]),
        tuple((float(a), float(b), float(c), float(d)) for a, b, c, d in doc["boxes"]),
        tuple(int(c) for c in doc["class_ids"]),
        tuple((None if t is None else int(t), int(c)) for t, c in doc["assigned"]),
        events,
    )
