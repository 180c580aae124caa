"""The event contract ``vlm.event/v1``: one JSON document per analytics event on
``vlm.events``, keyed by camera id.

Every event names the frame that caused it (topic/partition/offset) and the models that
saw it. ``event_id`` is the same each time that frame is processed (a retry, a failover),
so a reader that needs each event once deduplicates on it.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from vlm_core.contracts.dlq import FrameRef
from vlm_core.contracts.result import ModelRef
from vlm_core.contracts.schema import json_object, json_schema, validate
from vlm_core.errors import VlmError

EVENT_SCHEMA_VERSION = "vlm.event/v1"
EVENT_SCHEMA_FILE = "event-v1.json"


class EventError(VlmError):
    """An event document that does not follow ``vlm.event/v1``."""


class EventType(str, enum.Enum):
    LINE_CROSSED = "line_crossed"
    ZONE_ENTERED = "zone_entered"
    ZONE_EXITED = "zone_exited"
    DWELL_EXCEEDED = "dwell_exceeded"
    #: A periodic snapshot of every zone's occupancy and totals and every line's totals.
    COUNTS = "counts"


def event_json_schema() -> dict[str, Any]:
    return json_schema(EVENT_SCHEMA_FILE)


@dataclass(frozen=True)
class Event:
    type: EventType
    camera_id: str
    #: The frame that caused it: its seq, capture time and record.
    seq: int
    capture_ts_ms: int
    frame: FrameRef
    models: Mapping[str, ModelRef] = field(default_factory=dict)
    track_id: int | None = None
    class_id: int | None = None
    label: str | None = None
    zone: str | None = None
    line: str | None = None
    #: ``in`` or ``out`` for ``line_crossed``.
    direction: str | None = None
    #: Time in the zone, for ``zone_exited`` and ``dwell_exceeded``.
    dwell_s: float | None = None
    #: For ``counts``: {"zones": {name: {occupancy, entered, exited}}, "lines": {name: {in, out}}}.
    counts: Mapping[str, Any] | None = None
    #: Position among the events of its frame, for a stable ``event_id``.
    index: int = 0

    @property
    def event_id(self) -> str:
        return f"{self.frame}/{self.index}"

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": EVENT_SCHEMA_VERSION,
            "event_id": self.event_id,
            "type": self.type.value,
            "camera_id": self.camera_id,
            "seq": self.seq,
            "capture_ts_ms": self.capture_ts_ms,
            "frame": self.frame.to_json(),
            "models": {task: ref.to_json() for task, ref in self.models.items()},
            "track_id": self.track_id,
            "class_id": self.class_id,
            "label": self.label,
            "zone": self.zone,
            "line": self.line,
            "direction": self.direction,
            "dwell_s": self.dwell_s,
            "counts": None if self.counts is None else dict(self.counts),
        }

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_json(), separators=(",", ":"), allow_nan=False).encode()

    @classmethod
    def from_json(cls, doc: dict[str, Any], *, validate: bool = True) -> Event:
        if validate:
            validate_event(doc)
        frame = doc["frame"]
        _, _, index = doc["event_id"].rpartition("/")
        return cls(
            type=EventType(doc["type"]),
            camera_id=doc["camera_id"],
            seq=doc["seq"],
            capture_ts_ms=doc["capture_ts_ms"],
            frame=FrameRef(frame["topic"], frame["partition"], frame["offset"]),
            models={task: ModelRef.from_json(ref) for task, ref in doc["models"].items()},
            track_id=doc.get("track_id"),
            class_id=doc.get("class_id"),
            label=doc.get("label"),
            zone=doc.get("zone"),
            line=doc.get("line"),
            direction=doc.get("direction"),
            dwell_s=doc.get("dwell_s"),
            counts=doc.get("counts"),
            index=int(index) if index.isdigit() else 0,
        )

    @classmethod
    def from_bytes(cls, data: bytes, *, validate: bool = True) -> Event:
        return cls.from_json(json_object(data, EventError, "event"), validate=validate)


def validate_event(doc: dict[str, Any]) -> None:
    try:
        validate(doc, EVENT_SCHEMA_FILE, EventError)
    except EventError as exc:
        raise EventError(f"event violates {EVENT_SCHEMA_VERSION} at {exc}") from None
