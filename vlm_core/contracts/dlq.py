"""The dead-letter contract ``vlm.dlq/v1``: a frame record that could not be processed.

A dead letter is the original record (key, value and headers as they came) plus three
headers: why (a stable reason code), the error message, and the source record
(``topic/partition/offset``), which names it uniquely: readers that need exactly one dead
letter per bad frame deduplicate on it.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from vlm_core.contracts.schema import validate
from vlm_core.errors import VlmError

DLQ_SCHEMA_VERSION = "vlm.dlq/v1"
DLQ_SCHEMA_FILE = "dlq-v1.json"
DLQ_REASON_HEADER = "vlm-dlq-reason"
DLQ_ERROR_HEADER = "vlm-dlq-error"
DLQ_SOURCE_HEADER = "vlm-dlq-source"
#: The error header keeps at most this many characters of the message.
MAX_ERROR_CHARS = 500


class DeadLetterReason(str, enum.Enum):
    """Every reason code a dead letter can carry."""

    # from the frame contract (FrameError.reason)
    BAD_HEADER = "bad_header"
    BAD_TIMESTAMP = "bad_timestamp"
    UNSUPPORTED_ENCODING = "unsupported_encoding"
    UNDECODABLE = "undecodable"
    TOO_LARGE = "too_large"
    DIMENSION_MISMATCH = "dimension_mismatch"
    INVALID_FRAME = "invalid_frame"
    # from the processor
    INTERNAL_ERROR = "internal_error"  # anything unexpected while handling one record
    MODEL_ERROR = "model_error"  # the model failed on this frame alone
    PRODUCE_ERROR = "produce_error"  # the broker refused this frame's result alone


class DeadLetterError(VlmError):
    """A record on the dead-letter topic lacks or garbles the ``vlm.dlq/v1`` headers."""


@dataclass(frozen=True)
class FrameRef:
    """Where a frame record lives on Kafka."""

    topic: str
    partition: int
    offset: int

    def to_json(self) -> dict[str, str | int]:
        return {"topic": self.topic, "partition": self.partition, "offset": self.offset}

    def __str__(self) -> str:
        return f"{self.topic}/{self.partition}/{self.offset}"

    @classmethod
    def parse(cls, text: str) -> FrameRef:
        topic, sep, rest = text.rpartition("/")
        topic, sep2, partition = topic.rpartition("/")
        if not (sep and sep2 and topic and partition.isdigit() and rest.isdigit()):
            raise DeadLetterError(f"source {text[:200]!r} is not topic/partition/offset")
        return cls(topic, int(partition), int(rest))


@dataclass(frozen=True)
class DeadLetter:
    reason: str
    error: str
    source: FrameRef

    def headers(self) -> list[tuple[str, bytes]]:
        """The headers a dead letter adds to its record."""
        return [
            (DLQ_REASON_HEADER, self.reason.encode()),
            (DLQ_ERROR_HEADER, self.error[:MAX_ERROR_CHARS].encode("utf-8", "replace")),
            (DLQ_SOURCE_HEADER, str(self.source).encode()),
        ]

    @classmethod
    def from_headers(cls, headers: Iterable[tuple[str, bytes | None]] | None) -> DeadLetter:
        table = {k: v for k, v in headers or [] if k in (DLQ_REASON_HEADER, DLQ_ERROR_HEADER, DLQ_SOURCE_HEADER)}
        doc = {k: v.decode("utf-8", "replace") for k, v in table.items() if v is not None}
        validate(doc, DLQ_SCHEMA_FILE, DeadLetterError)
        return cls(doc[DLQ_REASON_HEADER], doc[DLQ_ERROR_HEADER], FrameRef.parse(doc[DLQ_SOURCE_HEADER]))


def dlq_reason(headers: Iterable[tuple[str, bytes | None]] | None) -> str | None:
    """The reason header of a dead letter, or None when it has none."""
    for key, value in headers or []:
        if key == DLQ_REASON_HEADER and value is not None:
            return value.decode("utf-8", "replace")
    return None
