"""Commit on revoke through the real broker: the processor's consumer adapter drains and
commits synchronously when a second group member takes partitions away."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from kafka import TopicPartition

from services import kafka_io
from services.kafka_io.adapters import KafkaFrameConsumer

pytestmark = pytest.mark.integration


def test_revoke_commits_what_was_processed(kafka_bootstrap: str, topic_name: str) -> None:
    kafka_io.ensure_topics(kafka_bootstrap, [kafka_io.TopicSpec(topic_name, partitions=2)])
    producer = kafka_io.producer(kafka_bootstrap)
    for i in range(40):
        producer.send(topic_name, key=f"cam-{i % 4}".encode(), value=b"x")
    producer.flush()
    producer.close()
    group = f"revoke-{uuid.uuid4().hex[:8]}"
    processed: dict[tuple[str, int], int] = {}
    revokes: list[dict[tuple[str, int], int]] = []

    def on_revoke() -> None:
        # What StreamProcessor.drain does: a synchronous commit of what was processed.
        revokes.append(dict(processed))
        if processed:
            first.commit(dict(processed), wait=True)

    first = KafkaFrameConsumer(kafka_bootstrap, topic_name, group, on_revoke=on_revoke)
    deadline = time.monotonic() + 60
    while sum(processed.values()) < 40 and time.monotonic() < deadline:
        for rec in first.poll(100, 500):
            processed[(rec.topic, rec.partition)] = rec.offset + 1
    assert sum(processed.values()) == 40, processed

    second_ready = threading.Event()
    stop = threading.Event()

    def run_second() -> None:
        second = KafkaFrameConsumer(kafka_bootstrap, topic_name, group, on_revoke=lambda: None)
        try:
            while not stop.is_set():
                second.poll(100, 500)
                if second.consumer.assignment():
                    second_ready.set()
        finally:
            second.close()

    joiner = threading.Thread(target=run_second, daemon=True)
    joiner.start()
    try:
        while not second_ready.is_set() and time.monotonic() < deadline + 60:
            first.poll(100, 500)  # the first member takes part in the rebalance by polling
        assert second_ready.is_set(), "the second member never got partitions"
        assert revokes and revokes[0] == processed
        committed = {
            (topic_name, p): first.consumer.committed(TopicPartition(topic_name, p), timeout_ms=10000) for p in (0, 1)
        }
        assert committed == {tp: processed.get(tp) for tp in committed}, (committed, processed)
    finally:
        stop.set()
        joiner.join(30)
        first.close()
