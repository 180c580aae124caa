"""Ground truth that rides with a frame: what a synthetic camera knows about the scene it
rendered, so that accuracy can be measured live. An optional ``vlm-truth`` frame header
(JSON); real cameras never carry it and nothing in the pipeline needs it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from vlm_core.contracts.result import BOX_DECIMALS
from vlm_core.contracts.schema import strict_json
from vlm_core.errors import FrameHeaderError

TRUTH_HEADER = "vlm-truth"
TRUTH_SCHEMA_VERSION = "vlm.truth/v1"
#: A truth header larger than this is refused (a frame holds a few dozen objects at most).
MAX_TRUTH_BYTES = 64 * 1024


@dataclass(frozen=True)
class TruthObject:
    #: ``(x1, y1, x2, y2)`` in the frame's pixels.
    box: tuple[float, float, float, float]
    label: str


@dataclass(frozen=True)
class FrameTruth:
    #: The scene's domain (a :class:`vlm_core.datasets.scenes.SceneStyle` value for
    #: synthetic cameras): accuracy is reported per domain.
    domain: str
    objects: tuple[TruthObject, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": TRUTH_SCHEMA_VERSION,
            "domain": self.domain,
            "objects": [{"box": [round(v, BOX_DECIMALS) for v in o.box], "label": o.label} for o in self.objects],
        }

    def to_header(self) -> tuple[str, bytes]:
        return TRUTH_HEADER, json.dumps(self.to_json(), separators=(",", ":")).encode()

    @classmethod
    def from_header(cls, raw: bytes) -> FrameTruth:
        if len(raw) > MAX_TRUTH_BYTES:
            raise FrameHeaderError(f"{TRUTH_HEADER} header is {len(raw)} bytes, limit {MAX_TRUTH_BYTES}")
        try:
            doc = strict_json(raw)
            if doc.get("schema") != TRUTH_SCHEMA_VERSION:
                raise FrameHeaderError(
                    f"{TRUTH_HEADER} schema {str(doc.get('schema'))[:40]!r} is not {TRUTH_SCHEMA_VERSION}"
                )
            objects = tuple(
                TruthObject(tuple(float(v) for v in o["box"]), str(o["label"]))  # type: ignore[arg-type]
                for o in doc["objects"]
            )
            if any(len(o.box) != 4 for o in objects):
                raise FrameHeaderError(f"a {TRUTH_HEADER} box does not have four coordinates")
            return cls(str(doc["domain"]), objects)
        except FrameHeaderError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise FrameHeaderError(f"malformed {TRUTH_HEADER} header: {type(exc).__name__}: {exc}") from None

    @classmethod
    def from_headers(cls, headers: Any) -> FrameTruth | None:
        """The truth in a record's headers, or None when it carries none."""
        for name, raw in headers or ():
            if name == TRUTH_HEADER and raw is not None:
                return cls.from_header(raw)
        return None

    def scaled(self, factor: float) -> FrameTruth:
        """The same truth for the frame resized by ``factor``."""
        objects = tuple(TruthObject(tuple(v * factor for v in o.box), o.label) for o in self.objects)  # type: ignore[arg-type]
        return FrameTruth(self.domain, objects)
