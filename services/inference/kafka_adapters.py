"""kafka-python behind the StreamProcessor's small consumer/producer protocols."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer, OffsetAndMetadata, TopicPartition

from vlm_core import kafka_io

log = logging.getLogger("ray.serve")


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, on_revoke: Callable[[], None]) -> None:
        self.on_revoke = on_revoke

    def on_partitions_revoked(self, revoked: Any) -> None:
        if revoked:
            log.info("partitions revoked: %s; finishing in-flight batches and committing", revoked)
            self.on_revoke()

    def on_partitions_assigned(self, assigned: Any) -> None:
        log.info("partitions assigned: %s", assigned)

    def on_partitions_lost(self, lost: Any) -> None:
        log.warning("partitions lost: %s; their uncommitted frames will be redelivered", lost)


class KafkaFrameConsumer:
    def __init__(self, bootstrap: str, topic: str, group_id: str, on_revoke: Callable[[], None]) -> None:
        self.topic = topic
        self.consumer: KafkaConsumer = kafka_io.consumer(
            bootstrap,
            group_id=group_id,
            session_timeout_ms=10000,
            heartbeat_interval_ms=2000,
            max_poll_interval_ms=300000,
            # A topic created moments ago may be missing from the first metadata; without a
            # short refresh the group would sit on an empty assignment for minutes.
            metadata_max_age_ms=5000,
        )
        if not self.consumer.partitions_for_topic(topic):
            log.warning("frames topic %r has no partitions yet; waiting for it to be created", topic)
        self.consumer.subscribe([topic], listener=_Rebalance(on_revoke))

    def poll(self, max_records: int, timeout_ms: int) -> list[Any]:
        """Up to ``max_records`` records, waiting at most ``timeout_ms`` for the batch to fill."""
        deadline = time.monotonic() + timeout_ms / 1000
        records: list[Any] = []
        while len(records) < max_records:
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0 and records:
                break
            batches = self.consumer.poll(timeout_ms=max(0, remaining_ms), max_records=max_records - len(records))
            records.extend(rec for part in batches.values() for rec in part)
            if remaining_ms <= 0:
                break
        return records

    def commit(self, offsets: dict[tuple[str, int], int]) -> None:
        self.consumer.commit({TopicPartition(t, p): OffsetAndMetadata(o, "", -1) for (t, p), o in offsets.items()})

    def rewind(self) -> None:
        for tp in self.consumer.assignment():
            committed = self.consumer.committed(tp)
            if committed is None:
                self.consumer.seek_to_beginning(tp)
            else:
                self.consumer.seek(tp, committed)

    def lag(self) -> dict[tuple[str, int], int]:
        lags = {}
        for tp in self.consumer.assignment():
            high = self.consumer.highwater(tp)
            if high is not None:
                lags[(tp.topic, tp.partition)] = max(0, high - self.consumer.position(tp))
        return lags

    def close(self) -> None:
        self.consumer.close()


class _Ack:
    def __init__(self, future: Any) -> None:
        self.future = future

    def result(self, timeout: float | None = None) -> Any:
        return self.future.get(timeout=timeout)


class KafkaResultProducer:
    def __init__(self, bootstrap: str) -> None:
        # Idempotence keeps per-partition order through retries with several requests in flight.
        self.producer: KafkaProducer = kafka_io.producer(bootstrap, enable_idempotence=True, linger_ms=2)

    def send(self, topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> _Ack:
        return _Ack(self.producer.send(topic, key=key, value=value, headers=headers))

    def close(self) -> None:
        self.producer.flush(30)
        self.producer.close(30)
