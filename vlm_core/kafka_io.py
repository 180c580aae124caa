"""Kafka helpers (kafka-python): topic set-up and consistently configured clients.

Import this module only where Kafka is really used; the rest of vlm_core stays free of it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from vlm_core.errors import InfrastructureError
from vlm_core.frame import Frame

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
BOOTSTRAP_TIMEOUT_MS = 10000

_T = TypeVar("_T")


def _connect(factory: Callable[..., _T], bootstrap: str, **config: Any) -> _T:
    config.setdefault("bootstrap_timeout_ms", BOOTSTRAP_TIMEOUT_MS)
    try:
        return factory(bootstrap_servers=bootstrap, **config)
    except KafkaError as exc:
        raise InfrastructureError(
            f"cannot reach Kafka at {bootstrap}: {exc}", hint="start it with `vlm local up` or pass --bootstrap"
        ) from None


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int = 4
    retention_ms: int | None = None


def admin(bootstrap: str) -> KafkaAdminClient:
    return _connect(KafkaAdminClient, bootstrap, request_timeout_ms=10000)


def ensure_topics(bootstrap: str, topics: Iterable[TopicSpec]) -> None:
    client = admin(bootstrap)
    try:
        existing = set(client.list_topics())
        new = [
            NewTopic(
                t.name,
                t.partitions,
                1,
                topic_configs={"retention.ms": str(t.retention_ms)} if t.retention_ms else {},
            )
            for t in topics
            if t.name not in existing
        ]
        if new:
            with contextlib.suppress(TopicAlreadyExistsError):
                client.create_topics(new)
    finally:
        client.close()


def delete_topics(bootstrap: str, names: Iterable[str]) -> None:
    client = admin(bootstrap)
    try:
        present = set(client.list_topics())
        doomed = [n for n in names if n in present]
        if doomed:
            client.delete_topics(doomed)
    finally:
        client.close()


def producer(bootstrap: str, **overrides: Any) -> KafkaProducer:
    config: dict[str, Any] = {
        "acks": "all",
        "linger_ms": 5,
        "max_request_size": MAX_MESSAGE_BYTES,
        "retries": 5,
    }
    config.update(overrides)
    return _connect(KafkaProducer, bootstrap, **config)


def consumer(bootstrap: str, *topics: str, group_id: str | None, **overrides: Any) -> KafkaConsumer:
    config: dict[str, Any] = {
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "max_partition_fetch_bytes": MAX_MESSAGE_BYTES,
        "fetch_max_bytes": 4 * MAX_MESSAGE_BYTES,
    }
    config.update(overrides)
    return _connect(lambda **kw: KafkaConsumer(*topics, **kw), bootstrap, **config)


def send_frame(prod: KafkaProducer, topic: str, frame: Frame) -> Any:
    record = frame.to_kafka()
    return prod.send(topic, key=record.key, value=record.value, headers=record.headers)


__all__ = [
    "KafkaError",
    "TopicSpec",
    "admin",
    "consumer",
    "delete_topics",
    "ensure_topics",
    "producer",
    "send_frame",
]
