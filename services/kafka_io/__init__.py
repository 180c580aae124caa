"""Kafka helpers (kafka-python): topic set-up and consistently configured clients.

Import this module only where Kafka is really used; the rest of vlm_core stays free of it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import (
    AuthorizationError,
    KafkaConnectionError,
    KafkaError,
    SaslAuthenticationFailedError,
    TopicAlreadyExistsError,
)

from vlm_core.config import Topics
from vlm_core.contracts.frame import Frame
from vlm_core.errors import InfrastructureError

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
BOOTSTRAP_TIMEOUT_MS = 10000
#: What kafka-python's connection error says when the peer closed an established connection.
HANG_UP = "socket disconnected"

_T = TypeVar("_T")


#: Broker security from the environment, so every client (ingest, processor, trainer)
#: picks it up the same way; the Helm chart fills these from Secrets.
SECURITY_ENV = {
    "VLM_KAFKA_SECURITY_PROTOCOL": "security_protocol",
    "VLM_KAFKA_SASL_MECHANISM": "sasl_mechanism",
    "VLM_KAFKA_SASL_USERNAME": "sasl_plain_username",
    "VLM_KAFKA_SASL_PASSWORD": "sasl_plain_password",
    "VLM_KAFKA_SSL_CAFILE": "ssl_cafile",
}


def security_options(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    env = os.environ if environ is None else environ
    options = {option: env[name] for name, option in SECURITY_ENV.items() if env.get(name)}
    protocol = options.get("security_protocol", "PLAINTEXT")
    if protocol not in ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"):
        raise InfrastructureError(
            f"VLM_KAFKA_SECURITY_PROTOCOL={protocol!r} is not a Kafka security protocol",
            hint="use PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL",
        )
    return options


class _RefusalLog(logging.Handler):
    """Keeps the first authentication or TLS failure kafka-python logs while it bootstraps:
    it retries those until its deadline and then reports only a timeout.

    kafka-python 3.0 drops the bytes it read together with the end of the stream, so when a
    broker's refusal and its hang-up arrive in one read (more likely the busier the client
    is) the refusal is lost and only "socket disconnected" is logged. A hang-up after the
    TLS handshake is counted too: over SASL it means the broker refused the user."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.refusal: BaseException | None = None
        self.hang_ups = 0

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args if isinstance(record.args, tuple) else ()
        refusals = (SaslAuthenticationFailedError, AuthorizationError, ssl.SSLError)
        for arg in args:
            if self.refusal is None and isinstance(arg, refusals):
                self.refusal = arg
            elif isinstance(arg, KafkaConnectionError) and str(arg).endswith(HANG_UP):
                self.hang_ups += 1


@contextlib.contextmanager
def _watch_refusals() -> Iterator[_RefusalLog]:
    watcher, kafka_log = _RefusalLog(), logging.getLogger("kafka")
    kafka_log.addHandler(watcher)
    try:
        yield watcher
    finally:
        kafka_log.removeHandler(watcher)


def _connect(factory: Callable[..., _T], bootstrap: str, **config: Any) -> _T:
    config.setdefault("bootstrap_timeout_ms", BOOTSTRAP_TIMEOUT_MS)
    # A broker that restarts is reconnected within seconds (kafka-python waits up to 30 s).
    config.setdefault("reconnect_backoff_max_ms", 2000)
    config = {**security_options(), **config}
    with _watch_refusals() as watcher:
        try:
            return factory(bootstrap_servers=bootstrap, **config)
        except KafkaError as exc:
            failure = exc
    if isinstance(watcher.refusal, ssl.SSLError):
        raise InfrastructureError(
            f"the TLS handshake with Kafka at {bootstrap} failed: {watcher.refusal}",
            hint="VLM_KAFKA_SSL_CAFILE must name the CA that signed the broker's certificate",
        )
    sasl = str(config.get("security_protocol", "")).startswith("SASL")
    if watcher.refusal is not None or (sasl and watcher.hang_ups):
        user = config.get("sasl_plain_username", "(no user)")
        reason = (
            str(watcher.refusal).rsplit(": ", 1)[-1].strip()
            if watcher.refusal is not None
            else "it closed the connection while authenticating"
        )
        raise InfrastructureError(
            f"Kafka at {bootstrap} refused user {user!r} ({config.get('sasl_mechanism', 'no SASL mechanism')}): "
            f"{reason}",
            hint="check VLM_KAFKA_SASL_USERNAME and VLM_KAFKA_SASL_PASSWORD (a local secure stack keeps them in "
            "<state dir>/kafka-security/<principal>.env)",
        )
    raise InfrastructureError(
        f"cannot reach Kafka at {bootstrap}: {failure}", hint="start it with `vlm local up` or pass --bootstrap"
    )


#: A compacted topic rolls a segment this often, so old states are compacted away soon.
COMPACTED_SEGMENT_MS = 600_000


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int = 4
    retention_ms: int | None = None
    #: Keep only each key's latest record (a changelog such as the tracker state).
    compact: bool = False

    def configs(self) -> dict[str, str]:
        configs = {"retention.ms": str(self.retention_ms)} if self.retention_ms else {}
        if self.compact:
            configs.update({"cleanup.policy": "compact", "segment.ms": str(COMPACTED_SEGMENT_MS)})
        return configs


def admin(bootstrap: str) -> KafkaAdminClient:
    return _connect(KafkaAdminClient, bootstrap, request_timeout_ms=10000)


def ensure_topics(bootstrap: str, topics: Iterable[TopicSpec], *, replication: int | None = None) -> None:
    """Create the topics that do not exist. ``replication`` default: one replica per broker
    of a cluster of up to three (3 on the cluster in a box, whose min.insync.replicas is 2)."""
    client = admin(bootstrap)
    try:
        existing = set(client.list_topics())
        if replication is None:
            replication = min(3, len(client.describe_cluster().get("brokers", [])) or 1)
        new = [
            NewTopic(t.name, t.partitions, replication, topic_configs=t.configs())
            for t in topics
            if t.name not in existing
        ]
        if new:
            with contextlib.suppress(TopicAlreadyExistsError):
                client.create_topics(new)
    finally:
        client.close()


def private_topics(prefix: str) -> Topics:
    """Topic names ``<prefix>.*`` for one run of a bench or a test (give it a fresh tag)."""
    tag = prefix
    return Topics(
        frames=f"{tag}.frames",
        results=f"{tag}.results",
        dlq=f"{tag}.dlq",
        labels=f"{tag}.labels",
        to_label=f"{tag}.to_label",
        events=f"{tag}.events",
        tracks_state=f"{tag}.tracks",
    )


def ensure_pipeline_topics(bootstrap: str, topics: Topics, partitions: int = 4) -> list[str]:
    """The topics a pipeline run writes (frames, results, dead letters, events and the
    compacted tracker state, co-partitioned with the frames); returns their names."""
    names = [topics.frames, topics.results, topics.dlq, topics.events, topics.tracks_state]
    ensure_topics(bootstrap, [TopicSpec(t, partitions, compact=t == topics.tracks_state) for t in names])
    return names


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
    """Every reader the project ships reads ``read_committed``: outputs of an aborted
    exactly-once transaction are never seen, and a group's committed offsets are fetched
    only once stable (KIP-447). Non-transactional records read as before."""
    config: dict[str, Any] = {
        "group_id": group_id,
        "isolation_level": "read_committed",
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "max_partition_fetch_bytes": MAX_MESSAGE_BYTES,
        "fetch_max_bytes": 4 * MAX_MESSAGE_BYTES,
    }
    config.update(overrides)
    return _connect(lambda **kw: KafkaConsumer(*topics, **kw), bootstrap, **config)


def topic_reader(bootstrap: str, topic: str, *, from_beginning: bool) -> tuple[KafkaConsumer, list[TopicPartition]]:
    """A group-less consumer assigned to every partition of ``topic``, at its start or end.
    The partition list is empty when the topic does not exist."""
    reader = consumer(bootstrap, group_id=None)
    partitions = [TopicPartition(topic, p) for p in sorted(reader.partitions_for_topic(topic) or [])]
    if partitions:
        reader.assign(partitions)
        if from_beginning:
            reader.seek_to_beginning(*partitions)
        else:
            reader.seek_to_end(*partitions)
    return reader, partitions


def follow_topic(
    bootstrap: str,
    topic: str,
    on_records: Callable[[list[Any]], None],
    stop: threading.Event,
    *,
    from_beginning: bool,
    poll_ms: int = 500,
) -> None:
    """Hand each poll's records of ``topic`` (every partition, ``read_committed``) to
    ``on_records`` until ``stop`` is set: the loop of a reader thread."""
    reader, _partitions = topic_reader(bootstrap, topic, from_beginning=from_beginning)
    try:
        while not stop.is_set():
            for records in reader.poll(timeout_ms=poll_ms).values():
                on_records(records)
    finally:
        reader.close()


def read_records(
    bootstrap: str,
    topic: str,
    expected: int,
    *,
    timeout_s: float,
    linger_ms: int = 0,
    give_up: Callable[[], bool] = lambda: False,
    after: Mapping[int, int] | None = None,
) -> list[Any]:
    """Records of ``topic`` from the beginning, in per-partition order, until ``expected``
    arrived, ``timeout_s`` passed or ``give_up()`` is true (the writer failed); then
    ``linger_ms`` more, so a surplus is seen too. ``after`` maps partitions to the offset
    to start at instead (see :func:`next_offsets`)."""
    reader, _partitions = topic_reader(bootstrap, topic, from_beginning=True)
    for partition, offset in (after or {}).items():
        reader.seek(TopicPartition(topic, partition), offset)
    records: list[Any] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(records) < expected and time.monotonic() < deadline and not give_up():
            for part in reader.poll(timeout_ms=500).values():
                records.extend(part)
        if linger_ms:
            for part in reader.poll(timeout_ms=linger_ms).values():
                records.extend(part)
    finally:
        reader.close()
    return records


def next_offsets(records: Iterable[Any]) -> dict[int, int]:
    """Each partition's offset after the last of ``records`` (``read_records``' ``after``)."""
    offsets: dict[int, int] = {}
    for record in records:
        offsets[record.partition] = max(offsets.get(record.partition, 0), record.offset + 1)
    return offsets


def read_to_end(bootstrap: str, topic: str, *, timeout_s: float = 120.0) -> tuple[list[Any], dict[int, int]]:
    """Every record of ``topic`` up to the end offsets it had when called, and those offsets:
    a consistent cut of a topic that keeps growing."""
    reader, partitions = topic_reader(bootstrap, topic, from_beginning=True)
    records: list[Any] = []
    try:
        ends = reader.end_offsets(partitions) if partitions else {}
        deadline = time.monotonic() + timeout_s
        while any(reader.position(tp) < end for tp, end in ends.items()):
            if time.monotonic() > deadline:
                raise InfrastructureError(f"reading {topic} to its end took over {timeout_s:.0f}s")
            for part in reader.poll(timeout_ms=500).values():
                records.extend(r for r in part if r.offset < ends[TopicPartition(r.topic, r.partition)])
    finally:
        reader.close()
    return records, {tp.partition: end for tp, end in ends.items()}


def send_frame(prod: KafkaProducer, topic: str, frame: Frame) -> Any:
    record = frame.to_kafka()
    return prod.send(topic, key=record.key, value=record.value, headers=record.headers)


__all__ = [
    "KafkaError",
    "TopicSpec",
    "admin",
    "consumer",
    "delete_topics",
    "ensure_pipeline_topics",
    "ensure_topics",
    "follow_topic",
    "next_offsets",
    "private_topics",
    "producer",
    "read_records",
    "read_to_end",
    "send_frame",
    "topic_reader",
]
