"""The dead-letter sink: the refused record as it came (key, value, headers) plus the
``vlm.dlq/v1`` headers (reason, error, source record)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vlm_core.contracts.dlq import DeadLetter, FrameRef
from vlm_core.stream.ports import Pending, Producer
from vlm_core.stream.sinks import Rejected


@dataclass(frozen=True)
class DeadLettersToKafka:
    producer: Producer
    topic: str
    name: str = "dead_letters"

    def __call__(self, rejected: Rejected) -> Sequence[Pending]:
        rec = rejected.record
        # Only what a producer can send again: a record's own headers may hold anything.
        headers = [(k, v) for k, v in (rec.headers or []) if isinstance(k, str) and isinstance(v, bytes)]
        letter = DeadLetter(rejected.reason, rejected.error, FrameRef(rec.topic, rec.partition, rec.offset))
        value = rec.value if isinstance(rec.value, bytes) else b""
        key = rec.key if isinstance(rec.key, bytes) else None
        return [self.producer.send(self.topic, key, value, headers + letter.headers())]
