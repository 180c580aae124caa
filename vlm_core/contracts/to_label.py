"""The to-label contract ``vlm.to_label/v1``: a frame the models were unsure of, by
reference (the frame stays on ``vlm.frames``), for a labelling tool."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from vlm_core.contracts.dlq import FrameRef
from vlm_core.contracts.schema import validate
from vlm_core.errors import VlmError

TO_LABEL_SCHEMA = "vlm.to_label/v1"
TO_LABEL_SCHEMA_FILE = "to-label-v1.json"


class ToLabelError(VlmError):
    """A to-label document breaks the ``vlm.to_label/v1`` schema."""


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

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": TO_LABEL_SCHEMA,
            "camera_id": self.camera_id,
            "seq": self.seq,
            "capture_ts_ms": self.capture_ts_ms,
            "frame": self.frame.to_json(),
            "scores": dict(self.scores),
            "models": dict(self.models),
        }

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_json(), allow_nan=False).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> ToLabel:
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ToLabelError(f"not JSON: {exc}") from None
        validate(doc, TO_LABEL_SCHEMA_FILE, ToLabelError)
        return cls(
            doc["camera_id"], doc["seq"], doc["capture_ts_ms"], FrameRef(**doc["frame"]), doc["scores"], doc["models"]
        )
