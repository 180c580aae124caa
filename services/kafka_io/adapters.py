"""kafka-python behind the StreamProcessor's small consumer/producer protocols."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from kafka import AsyncConsumerRebalanceListener, KafkaConsumer, KafkaProducer, OffsetAndMetadata, TopicPartition
from kafka.errors import KafkaTimeoutError
from kafka.future import Future
from kafka.structs import MemberState

from services import kafka_io
from vlm_core.errors import InfrastructureError
from vlm_core.pipeline import ProcessorSettings

log = logging.getLogger("ray.serve")

REBALANCE_POLL_MS = 30000
#: A member that has not finished joining its group after this long is recreated.
JOIN_STALL_S = 60.0


class _Rebalance(AsyncConsumerRebalanceListener):
    """Commit on revoke. kafka-python 3 calls rebalance listeners on its network thread,
    where a blocking consumer call such as a synchronous commit raises, and where waiting
    for in-flight batches would stall heartbeats. So the drain (finish in-flight batches,
    wait for their acks, commit) runs on a helper thread while this coroutine waits on a
    kafka Future; the network thread meanwhile serves the commit and the heartbeats."""

    def __init__(self, consumer: Callable[[], KafkaConsumer], on_revoke: Callable[[], None]) -> None:
        self.consumer = consumer
        self.on_revoke = on_revoke
        #: Grows with every assignment; the processor loads tracker states when it moves.
        self.generation = 0

    async def on_partitions_revoked(self, revoked: Any) -> None:
        if not revoked:
            return
        log.info("partitions revoked: %s; finishing in-flight batches and committing", revoked)
        net = self.consumer()._coordinator._net
        finished = Future()

        def drain() -> None:
            error: BaseException | None = None
            try:
                self.on_revoke()
            except BaseException as exc:
                error = exc
            # Resolve on the network thread, which owns the waiting coroutine.
            net.call_soon_threadsafe(lambda: finished.failure(error) if error else finished.success(None))

        threading.Thread(target=drain, name="revoke-drain", daemon=True).start()
        try:
            await finished
        except Exception:
            log.exception("draining on revoke failed; the next owner re-reads the uncommitted frames")

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self.generation += 1
        log.info("partitions assigned: %s (assignment %d)", assigned, self.generation)


def _log_failed_commit(offsets: Any, response: Any) -> None:
    if isinstance(response, Exception):
        log.warning("offset commit %s failed (%s); a later commit covers it", offsets, response)


class KafkaFrameConsumer:
    def __init__(
        self,
        bootstrap: str,
        topic: str,
        group_id: str,
        on_revoke: Callable[[], None],
        fetch_max_wait_ms: int = ProcessorSettings().fetch_max_wait_ms,
    ) -> None:
        self.topic = topic
        self._next_offset: dict[tuple[str, int], int] = {}
        self._joining_since: float | None = None
        self.consumer: KafkaConsumer = kafka_io.consumer(
            bootstrap,
            group_id=group_id,
            session_timeout_ms=10000,
            heartbeat_interval_ms=2000,
            max_poll_interval_ms=300000,
            # A topic created moments ago may be missing from the first metadata; without a
            # short refresh the group would sit on an empty assignment for minutes.
            metadata_max_age_ms=5000,
            # kafka-python has one fetch in flight per broker. A fetch for partitions with no
            # new frames waits this long at the broker, and the next fetch of a busy
            # partition waits behind it: with Kafka's 500 ms, a paced camera's frames
            # queued about 340 ms more (see ProcessorSettings.fetch_max_wait_ms).
            fetch_max_wait_ms=fetch_max_wait_ms,
        )
        # No partitions_for_topic() check before subscribing: it loads every topic's
        # metadata, the group leader's first assignment then sees the metadata narrow to
        # the subscription and rebalances at once (and kafka-python 3.0 can lose that join).
        self._listener = _Rebalance(lambda: self.consumer, on_revoke)
        self._assigned: tuple[int, frozenset[tuple[str, int]]] = (-1, frozenset())
        self.consumer.subscribe([topic], listener=self._listener)

    def poll(self, max_records: int, timeout_ms: int) -> list[Any]:
        """Up to ``max_records`` records from one fetch.

        The broker answers a fetch as soon as data is there, so a long timeout costs
        nothing while frames flow, and a short one lets the processor finish a batch the
        models answered while no frames came. While the member is joining its group a poll
        waits REBALANCE_POLL_MS: kafka-python 3.0.12 keeps a join in flight across polls
        that time out, but earlier 3.0 releases lost a join that a poll timeout interrupted
        (the member then sat on an assignment it never fetched from).
        """
        wait_ms = timeout_ms
        if not self._joined() or not self.consumer.assignment():
            wait_ms = max(wait_ms, REBALANCE_POLL_MS)
        batches = self.consumer.poll(timeout_ms=wait_ms, max_records=max_records)
        records: list[Any] = []
        for part in batches.values():
            records.extend(part)
            if part:
                last = part[-1]
                self._next_offset[(last.topic, last.partition)] = last.offset + 1
        return records

    def _joined(self) -> bool:
        """Whether the member is STABLE in its group. kafka-python 3.0 can lose a rejoin:
        the member waits for an assignment that never comes while the broker no longer
        knows it (its LeaveGroup later fails with UnknownMemberId). A member out of the
        STABLE state for JOIN_STALL_S raises, and the processor replica reconnects with a
        fresh consumer; the uncommitted frames are read again. A member that is stable with
        no partitions (a spare replica) is fine."""
        coordinator = getattr(self.consumer, "_coordinator", None)
        if coordinator is not None and getattr(coordinator, "state", None) is MemberState.STABLE:
            self._joining_since = None
            return True
        now = time.monotonic()
        self._joining_since = self._joining_since or now
        if now - self._joining_since > JOIN_STALL_S:
            raise InfrastructureError(
                f"the consumer of {self.topic} has not joined its group for {JOIN_STALL_S:.0f}s; reconnecting"
            )
        return False

    def commit(self, offsets: dict[tuple[str, int], int], wait: bool = True) -> None:
        kafka_offsets = {TopicPartition(t, p): OffsetAndMetadata(o, "", -1) for (t, p), o in offsets.items()}
        if wait:
            self.consumer.commit(kafka_offsets)
        else:
            self.consumer.commit_async(kafka_offsets, callback=_log_failed_commit)

    def rewind(self) -> None:
        self._next_offset.clear()
        for tp in self.consumer.assignment():
            committed = self.consumer.committed(tp, timeout_ms=10000)
            if committed is None:
                self.consumer.seek_to_beginning(tp)
            else:
                self.consumer.seek(tp, committed)

    def lag(self) -> dict[tuple[str, int], int]:
        """Lag from the fetch high-water marks and what was polled: no blocking broker calls,
        which could stall the loop during a rebalance."""
        lags = {}
        for tp in self.consumer.assignment():
            high = self.consumer.highwater(tp)
            position = self._next_offset.get((tp.topic, tp.partition))
            if high is not None and position is not None:
                lags[(tp.topic, tp.partition)] = max(0, high - position)
        return lags

    def assignment(self) -> tuple[int, frozenset[tuple[str, int]]]:
        """Called every step: the partition set is read once per assignment generation."""
        generation = self._listener.generation
        if self._assigned[0] != generation:
            self._assigned = (generation, frozenset((tp.topic, tp.partition) for tp in self.consumer.assignment()))
        return self._assigned

    def close(self) -> None:
        self.consumer.close()


class _Ack:
    def __init__(self, future: Any) -> None:
        self.future = future

    def result(self, timeout: float | None = None) -> Any:
        return self.future.get(timeout=timeout)


class KafkaResultProducer:
    def __init__(
        self, bootstrap: str, *, transactional_id: str | None = None, transaction_timeout_ms: int = 20_000
    ) -> None:
        # Idempotence keeps per-partition order through retries with several requests in flight.
        options: dict[str, Any] = {"enable_idempotence": True, "linger_ms": 2}
        if transactional_id is not None:
            options.update(transactional_id=transactional_id, transaction_timeout_ms=transaction_timeout_ms)
        self.producer: KafkaProducer = kafka_io.producer(bootstrap, **options)
        if transactional_id is not None:
            # Fences an earlier producer of this id (a replica that died) and completes or
            # aborts what it left open, so read_committed readers move on at once.
            self.producer.init_transactions()

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: list[tuple[str, bytes]],
        partition: int | None = None,
    ) -> _Ack:
        return _Ack(self.producer.send(topic, key=key, value=value, headers=headers, partition=partition))

    def close(self) -> None:
        self.producer.flush(30)
        self.producer.close(30)


class KafkaTransactions:
    """The processor's :class:`~vlm_core.stream.ports.Transactions` over a transactional
    producer and the frames consumer: offsets go into the transaction with the consumer's
    group metadata (KIP-447), so a member that lost its partitions cannot commit."""

    def __init__(self, producer: KafkaResultProducer, consumer: KafkaFrameConsumer, *, timeout_s: float = 30.0) -> None:
        self.producer = producer.producer
        self.consumer = consumer
        self.timeout_ms = int(timeout_s * 1000)
        self._open = False

    def begin(self) -> None:
        if not self._open:
            self.producer.begin_transaction()
            self._open = True

    def commit(self, offsets: dict[tuple[str, int], int]) -> None:
        self.begin()
        manager = self.producer._transaction_manager
        kafka_offsets = {TopicPartition(t, p): OffsetAndMetadata(o, "", -1) for (t, p), o in offsets.items()}
        if kafka_offsets:
            group = self.consumer.consumer.group_metadata()
            self._await(manager.send_offsets_to_transaction(kafka_offsets, group), "adding the offsets")
        self._await(manager.begin_commit(), "the commit")
        self._open = False

    def abort(self) -> None:
        if self._open:
            self._open = False
            self._await(self.producer._transaction_manager.begin_abort(), "the abort")

    def _await(self, result: Any, what: str) -> None:
        """What ``commit_transaction`` and friends do, with a deadline: kafka-python 3.0 waits
        on their results with none, and a transaction coordinator that died with the request
        (its broker SIGKILLed) left a processor waiting for good. Past the deadline the
        batch fails: aborted, or the producer recreated, and the frames read again."""
        self.producer._sender.wakeup()
        if not result.wait(timeout_ms=self.timeout_ms):
            raise KafkaTimeoutError(f"{what} of the transaction was not acknowledged within {self.timeout_ms} ms")
