"""The to-label contract ``vlm.to_label/v2``: a frame the models were unsure of, by
reference (the frame stays on ``vlm.frames``), with the model's prediction for a labelling
tool to start from. Readers accept v1 (no prediction)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from vlm_core.contracts.dlq import FrameRef
from vlm_core.contracts.schema import strict_json, validate
from vlm_core.errors import VlmError

TO_LABEL_SCHEMA = "vlm.to_label/v2"
TO_LABEL_SCHEMA_FILES = {"vlm.to_label/v1": "to-label-v1.json", TO_LABEL_SCHEMA: "to-label-v2.json"}


class ToLabelError(VlmError):
    """A to-label document breaks the ``vlm.to_label`` schema."""


@dataclass(frozen=True)
class ToLabel:
    camera_id: str
    seq: int
    capture_ts_ms: int
    frame: FrameRef
    #: The low scores, by task.
    scores: dict[str, float]
    #: ``name@version`` of the model behind each low score.
    models: dict[str, str] = field(default_factory=dict)
    #: The low tasks' outputs, as in a result's ``tasks`` (empty from a v1 producer).
    prediction: dict[str, Any] = field(default_factory=dict)
    #: (width, height) of the frame; None from a v1 producer.
    frame_size: tuple[int, int] | None = None

    @property
    def ref(self) -> str:
        """``camera:seq``, unique per frame: what a labelling tool's task is known by."""
        return f"{self.camera_id}:{self.seq}"

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": TO_LABEL_SCHEMA,
            "camera_id": self.camera_id,
            "seq": self.seq,
            "capture_ts_ms": self.capture_ts_ms,
            "frame": self.frame.to_json(),
            "scores": dict(self.scores),
            "models": dict(self.models),
            "prediction": self.prediction,
            **({"frame_size": list(self.frame_size)} if self.frame_size else {}),
        }

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_json(), allow_nan=False).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> ToLabel:
        try:
            doc = strict_json(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ToLabelError(f"not JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise ToLabelError("a to-label document is a JSON object")
        schema_file = TO_LABEL_SCHEMA_FILES.get(str(doc.get("schema")))
        if schema_file is None:
            known = ", ".join(TO_LABEL_SCHEMA_FILES)
            schema = str(doc.get("schema"))[:60]
            raise ToLabelError(f"to-label schema {schema!r} is not one this reader knows ({known})")
        validate(doc, schema_file, ToLabelError)
        size = doc.get("frame_size")
        return cls(
            doc["camera_id"],
            doc["seq"],
            doc["capture_ts_ms"],
            FrameRef(**doc["frame"]),
            doc["scores"],
            doc["models"],
            doc.get("prediction", {}),
            (int(size[0]), int(size[1])) if size else None,
        )
