"""The tracker-state topic behind the StreamProcessor's :class:`StateStore` port.

``vlm.tracks.state`` is compacted and keyed by camera, with as many partitions as the
frames topic: a camera's state is written to its frames partition's number, so the new
owner of frames partition P reads state partition P alone (Kafka Streams' co-partitioning).
"""

from __future__ import annotations

import time
from collections.abc import Collection

from kafka import TopicPartition

from services import kafka_io
from services.kafka_io.adapters import KafkaResultProducer
from vlm_core.errors import ConfigError, InfrastructureError
from vlm_core.stream.ports import Pending, StateRecord

LOAD_TIMEOUT_S = 60.0


class KafkaTrackStateStore:
    def __init__(self, bootstrap: str, topic: str, frames_topic: str, producer: KafkaResultProducer) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.producer = producer
        self._check_partitions(frames_topic)

    def _check_partitions(self, frames_topic: str) -> None:
        reader = kafka_io.consumer(self.bootstrap, group_id=None)
        try:
            state = reader.partitions_for_topic(self.topic)
            frames = reader.partitions_for_topic(frames_topic)
        finally:
            reader.close()
        if not state:
            raise ConfigError(
                f"the tracker state topic {self.topic} does not exist",
                hint=f"create it compacted (cleanup.policy=compact) with as many partitions as {frames_topic}",
            )
        if frames and len(state) != len(frames):
            raise ConfigError(
                f"{self.topic} has {len(state)} partitions and {frames_topic} {len(frames)}: they must match",
                hint=f"recreate {self.topic} with {len(frames)} partitions (cleanup.policy=compact)",
            )

    def write(self, record: StateRecord) -> Pending:
        assert record.value is not None
        return self.producer.send(self.topic, record.camera_id.encode(), record.value, [], partition=record.partition)

    def load(self, partitions: Collection[int]) -> list[StateRecord]:
        if not partitions:
            return []
        reader = kafka_io.consumer(self.bootstrap, group_id=None)
        latest: dict[str, StateRecord] = {}
        try:
            tps = [TopicPartition(self.topic, p) for p in partitions]
            reader.assign(tps)
            reader.seek_to_beginning(*tps)
            ends = reader.end_offsets(tps)
            deadline = time.monotonic() + LOAD_TIMEOUT_S
            while any(reader.position(tp) < end for tp, end in ends.items()):
                if time.monotonic() > deadline:
                    raise InfrastructureError(f"loading tracker states from {self.topic} took over {LOAD_TIMEOUT_S}s")
                for part in reader.poll(timeout_ms=500).values():
                    for rec in part:
                        if rec.key is None:
                            continue
                        camera = rec.key.decode("utf-8", "replace")
                        latest[camera] = StateRecord(camera, rec.partition, rec.value)
        finally:
            reader.close()
        return list(latest.values())
