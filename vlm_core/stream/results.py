"""The results sink: one ``vlm.result/v2`` document per frame on the results topic, keyed
by camera id so a camera's results stay in order."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vlm_core.stream.ports import Pending, Producer
from vlm_core.stream.sinks import Processed


@dataclass(frozen=True)
class ResultsToKafka:
    producer: Producer
    topic: str
    name: str = "results"

    def __call__(self, processed: Processed) -> Sequence[Pending]:
        return [self.producer.send(self.topic, processed.frame.camera_id.encode(), processed.value, [])]
