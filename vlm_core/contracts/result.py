"""The result contract ``vlm.result/v2``: one JSON document per frame.

The dataclasses below serialise to the JSON Schema shipped in ``schemas/result-v2.json``
and parse it back; changing the shape means a new schema version. v2 adds each
detection's ``track_id`` and a per-frame ``tracking`` section to v1; readers accept both
(a v1 document reads as untracked).

Numbers are written at a fixed precision (:data:`BOX_DECIMALS` and the like). A document
read with more precision than that is written back at it, so one read and write makes
any document a fixed point: writing what was read and reading it again gives the same
result.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from vlm_core.contracts.rle import RLE
from vlm_core.contracts.schema import json_object, json_schema, validate
from vlm_core.contracts.task import Task
from vlm_core.errors import ResultError

RESULT_SCHEMA_VERSION = "vlm.result/v2"
_O = TypeVar("_O")

#: The schema file of every version a reader accepts, by the document's ``schema``.
RESULT_SCHEMA_FILES = {"vlm.result/v1": "result-v1.json", "vlm.result/v2": "result-v2.json"}
RESULT_SCHEMA_FILE = RESULT_SCHEMA_FILES[RESULT_SCHEMA_VERSION]

#: Decimal places on the wire: boxes to 1/100 px, scores and pixel fractions to 1e-6,
#: stage timings to 1 µs. Finer digits are noise from float32 and only cost bytes.
BOX_DECIMALS = 2
SCORE_DECIMALS = 6
TIMING_DECIMALS = 3


def result_json_schema() -> dict[str, Any]:
    return json_schema(RESULT_SCHEMA_FILE)


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: str

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> ModelRef:
        return cls(doc["name"], doc["version"])


@dataclass(frozen=True)
class ClassScore:
    label: str
    class_id: int
    score: float

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "class_id": self.class_id, "score": round(self.score, SCORE_DECIMALS)}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> ClassScore:
        return cls(doc["label"], doc["class_id"], doc["score"])


@dataclass(frozen=True)
class Classification:
    model: ModelRef
    top_k: tuple[ClassScore, ...]

    @property
    def top(self) -> ClassScore | None:
        return self.top_k[0] if self.top_k else None

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model.to_json(), "top_k": [c.to_json() for c in self.top_k]}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Classification:
        return cls(ModelRef.from_json(doc["model"]), tuple(ClassScore.from_json(c) for c in doc["top_k"]))


@dataclass(frozen=True)
class Detection:
    #: ``(x1, y1, x2, y2)`` in the original frame's pixels.
    box: tuple[float, float, float, float]
    label: str
    class_id: int
    score: float
    #: The camera's track of this object; None while unconfirmed or when untracked.
    track_id: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "box": [round(v, BOX_DECIMALS) for v in self.box],
            "label": self.label,
            "class_id": self.class_id,
            "score": round(self.score, SCORE_DECIMALS),
            "track_id": self.track_id,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Detection:
        x1, y1, x2, y2 = doc["box"]
        return cls((x1, y1, x2, y2), doc["label"], doc["class_id"], doc["score"], doc.get("track_id"))


@dataclass(frozen=True)
class Detections:
    model: ModelRef
    detections: tuple[Detection, ...]

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model.to_json(), "detections": [d.to_json() for d in self.detections]}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Detections:
        return cls(ModelRef.from_json(doc["model"]), tuple(Detection.from_json(d) for d in doc["detections"]))


@dataclass(frozen=True)
class ClassMask:
    class_id: int
    label: str
    pixel_fraction: float
    mask: RLE

    def to_json(self) -> dict[str, Any]:
        return {
            "class_id": self.class_id,
            "label": self.label,
            "pixel_fraction": round(self.pixel_fraction, SCORE_DECIMALS),
            "mask": self.mask.to_json(),
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> ClassMask:
        return cls(doc["class_id"], doc["label"], doc["pixel_fraction"], RLE.from_json(doc["mask"]))


@dataclass(frozen=True)
class Segmentation:
    model: ModelRef
    classes: tuple[ClassMask, ...]

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model.to_json(), "classes": [c.to_json() for c in self.classes]}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Segmentation:
        return cls(ModelRef.from_json(doc["model"]), tuple(ClassMask.from_json(c) for c in doc["classes"]))


class TaskOutput(Protocol):
    """What a model returns for one frame: the part of a result its task owns."""

    @property
    def model(self) -> ModelRef: ...

    def to_json(self) -> dict[str, Any]: ...


#: The output type of each task, by task name: how a result's ``tasks.<name>`` is read back.
_OUTPUT_TYPES: dict[str, Any] = {}


def register_output(task: str, output_type: Any) -> None:
    """Declare the output type of a task (its ``from_json`` reads ``tasks.<task>``)."""
    _OUTPUT_TYPES[str(task)] = output_type


register_output(Task.CLASSIFICATION, Classification)
register_output(Task.DETECTION, Detections)
register_output(Task.SEGMENTATION, Segmentation)


@dataclass(frozen=True)
class TrackingInfo:
    """The per-frame tracking section of a result."""

    tracker: str
    #: Confirmed tracks of the camera after this frame (seen now or briefly lost).
    active_tracks: int
    #: The frame was processed before (a retry, a failover): ids and events are the first time's.
    replayed: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"tracker": self.tracker, "active_tracks": self.active_tracks, "replayed": self.replayed}

    @classmethod
    def from_json(cls, doc: dict[str, Any] | None) -> TrackingInfo | None:
        return None if doc is None else cls(doc["tracker"], doc["active_tracks"], doc["replayed"])


@dataclass(frozen=True)
class Result:
    camera_id: str
    seq: int
    capture_ts_ms: int
    processed_ts_ms: int
    width: int
    height: int
    #: Each served task's output, by task.
    outputs: Mapping[Task, TaskOutput] = field(default_factory=dict)
    timing_ms: dict[str, float] = field(default_factory=dict)
    partition: int | None = None
    offset: int | None = None
    #: None when the camera is not tracked (and for every v1 document).
    tracking: TrackingInfo | None = None

    @property
    def classification(self) -> Classification | None:
        return self._output(Task.CLASSIFICATION, Classification)

    @property
    def detection(self) -> Detections | None:
        return self._output(Task.DETECTION, Detections)

    @property
    def segmentation(self) -> Segmentation | None:
        return self._output(Task.SEGMENTATION, Segmentation)

    def _output(self, task: Task, kind: type[_O]) -> _O | None:
        output = self.outputs.get(task)
        return output if isinstance(output, kind) else None

    @property
    def latency_ms(self) -> int:
        return self.processed_ts_ms - self.capture_ts_ms

    def to_json(self) -> dict[str, Any]:
        frame: dict[str, Any] = {"width": self.width, "height": self.height}
        if self.partition is not None:
            frame["partition"] = self.partition
        if self.offset is not None:
            frame["offset"] = self.offset
        tasks = {str(task): output.to_json() for task, output in self.outputs.items()}
        return {
            "schema": RESULT_SCHEMA_VERSION,
            "camera_id": self.camera_id,
            "seq": self.seq,
            "capture_ts_ms": self.capture_ts_ms,
            "processed_ts_ms": self.processed_ts_ms,
            "frame": frame,
            "tasks": tasks,
            "timing_ms": {k: round(v, TIMING_DECIMALS) for k, v in self.timing_ms.items()},
            "tracking": None if self.tracking is None else self.tracking.to_json(),
        }

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_json(), separators=(",", ":"), allow_nan=False).encode()

    @classmethod
    def from_json(cls, doc: dict[str, Any], *, validate: bool = True) -> Result:
        if validate:
            validate_result(doc)
        tasks = doc["tasks"]
        frame = doc["frame"]
        return cls(
            camera_id=doc["camera_id"],
            seq=doc["seq"],
            capture_ts_ms=doc["capture_ts_ms"],
            processed_ts_ms=doc["processed_ts_ms"],
            width=frame["width"],
            height=frame["height"],
            # A task whose output type this process does not know is left out.
            outputs={Task(n): _OUTPUT_TYPES[n].from_json(out) for n, out in tasks.items() if n in _OUTPUT_TYPES},
            timing_ms=dict(doc["timing_ms"]),
            partition=frame.get("partition"),
            offset=frame.get("offset"),
            tracking=TrackingInfo.from_json(doc.get("tracking")),
        )

    @classmethod
    def from_bytes(cls, data: bytes, *, validate: bool = True) -> Result:
        return cls.from_json(json_object(data, ResultError, "result"), validate=validate)


def validate_result(doc: dict[str, Any]) -> None:
    """Raise ResultError naming the first schema violation, against the version the
    document names (v1 and v2 are both read)."""
    version = doc.get("schema")
    schema_file = RESULT_SCHEMA_FILES.get(version) if isinstance(version, str) else None
    if schema_file is None:
        known = ", ".join(RESULT_SCHEMA_FILES)
        raise ResultError(f"result schema {str(version)[:60]!r} is not one this reader knows ({known})")
    try:
        validate(doc, schema_file, ResultError)
    except ResultError as exc:
        raise ResultError(f"result violates {version} at {exc}") from None
