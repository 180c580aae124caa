"""The events sink: each frame's ``vlm.event/v1`` documents on the events topic, keyed by
camera id (a camera's events stay in order, beside its results)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vlm_core.stream.ports import Pending, Producer
from vlm_core.stream.sinks import Processed


@dataclass(frozen=True)
class EventsToKafka:
    producer: Producer
    topic: str
    name: str = "events"

    def __call__(self, processed: Processed) -> Sequence[Pending]:
        key = processed.frame.camera_id.encode()
        return [self.producer.send(self.topic, key, event.to_bytes(), []) for event in processed.events]
