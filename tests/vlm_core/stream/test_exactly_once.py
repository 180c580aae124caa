"""Exactly once over in-memory fakes: each batch's sends and offsets are one transaction,
and any failure, a failed send future included, aborts it and rewinds."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from tests.vlm_core.test_stream import TOPICS, Done, FakeConsumer, FakeModel, FakeProducer, Rec, frame_record
from vlm_core import metrics as m
from vlm_core.contracts.result import Result
from vlm_core.contracts.task import Task
from vlm_core.pipeline import CameraRouting, Delivery, ProcessorSettings
from vlm_core.stream import StreamProcessor, dlq_reason, kafka_sinks

Sent = tuple[str, bytes | None, bytes, list[tuple[str, bytes]]]


@dataclass
class TransactionalBroker:
    """A producer and its transactions: what a ``read_committed`` reader sees is
    ``visible``; a send whose future failed makes the commit fail (Kafka's abortable error)."""

    consumer: FakeConsumer
    #: 1-based numbers of the sends whose futures fail.
    failing_sends: set[int] = field(default_factory=set)
    fail_commits: int = 0
    abort_raises: bool = False
    visible: list[Sent] = field(default_factory=list)
    open: list[Sent] | None = None
    failed_in_open: bool = False
    sends = commits = aborts = 0

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: list[tuple[str, bytes]],
        partition: int | None = None,
    ) -> Done:
        assert self.open is not None, "a send outside a transaction"
        self.sends += 1
        self.open.append((topic, key, value, headers))
        if self.sends in self.failing_sends:
            self.failed_in_open = True
            return Done(error=TimeoutError("batch expired at an epoch bump"))
        return Done(True)

    def begin(self) -> None:
        assert self.open is None, "one transaction at a time"
        self.open, self.failed_in_open = [], False

    def commit(self, offsets: dict[tuple[str, int], int]) -> None:
        assert self.open is not None
        if self.failed_in_open or self.fail_commits:
            self.fail_commits = max(0, self.fail_commits - 1)
            raise RuntimeError("cannot commit: the transaction must be aborted")
        self.visible.extend(self.open)
        self.consumer.commit(offsets)
        self.open = None
        self.commits += 1

    def abort(self) -> None:
        if self.abort_raises:
            raise RuntimeError("producer fenced")
        self.open = None
        self.aborts += 1

    def results(self) -> list[Result]:
        return [Result.from_bytes(v) for t, _k, v, _h in self.visible if t == "results"]


def make(
    records: list[Rec], model: FakeModel | None = None, **broker_options: object
) -> tuple[StreamProcessor, FakeConsumer, TransactionalBroker]:
    consumer = FakeConsumer(records)
    broker = TransactionalBroker(consumer, **broker_options)  # type: ignore[arg-type]
    processor = StreamProcessor(
        consumer,
        {Task.CLASSIFICATION: model or FakeModel()},
        CameraRouting(),
        kafka_sinks(broker, TOPICS),
        batch_size=4,
        max_inflight=2,
        transactions=broker,
        clock_ms=lambda: 2_000,
        sleep=lambda _s: None,
    )
    return processor, consumer, broker


def run(processor: StreamProcessor, consumer: FakeConsumer, rounds: int = 60) -> None:
    for _ in range(rounds):
        processor.step()
    processor.drain()


def with_bad_frame(n: int, bad: int) -> list[Rec]:
    records = [frame_record(i) for i in range(n)]
    records[bad] = Rec("frames", 0, bad, records[bad].key, b"not an image", records[bad].headers)
    return records


def test_each_batch_is_one_transaction_with_its_offsets() -> None:
    processor, consumer, broker = make(with_bad_frame(10, 5))
    run(processor, consumer)
    assert [r.seq for r in broker.results()] == [0, 1, 2, 3, 4, 6, 7, 8, 9]
    assert broker.commits == 3 and broker.aborts == 0  # batches of 4, 4 and 2
    assert consumer.committed == {("frames", 0): 10}
    dlq = [h for t, _k, _v, h in broker.visible if t == "dlq"]
    assert [dlq_reason(h) for h in dlq] == ["undecodable"]


def test_a_failed_send_future_aborts_the_batch_and_nothing_is_seen_twice() -> None:
    # Send 2 is the second result of the first batch; the dead letter of frame 5 is in the
    # second batch, whose commit also fails once.
    processor, consumer, broker = make(with_bad_frame(12, 5), failing_sends={2}, fail_commits=0)
    run(processor, consumer)
    seqs = [r.seq for r in broker.results()]
    assert sorted(seqs) == [i for i in range(12) if i != 5] and len(seqs) == len(set(seqs))
    assert broker.aborts == 1 and consumer.rewinds == 1
    assert [dict(h)["vlm-dlq-source"] for t, _k, _v, h in broker.visible if t == "dlq"] == [b"frames/0/5"]
    assert processor.metrics.total(m.BATCH_FAILURES, stage="produce ack") == 1


def test_at_least_once_repeats_what_exactly_once_does_not() -> None:
    consumer = FakeConsumer([frame_record(i) for i in range(8)])
    producer = FakeProducer()
    failing = {"n": 0}
    send = producer.send

    def second_send_fails(topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> Done:
        failing["n"] += 1
        return Done(error=TimeoutError("lost ack")) if failing["n"] == 2 else send(topic, key, value, headers)

    producer.send = second_send_fails  # type: ignore[method-assign]
    processor = StreamProcessor(
        consumer, {Task.CLASSIFICATION: FakeModel()}, CameraRouting(), kafka_sinks(producer, TOPICS), batch_size=4
    )
    run(processor, consumer)
    seqs = [r.seq for r in producer.results()]
    assert sorted(set(seqs)) == list(range(8)) and len(seqs) > len(set(seqs)), "at least once repeats the batch"

    eo, eo_consumer, broker = make([frame_record(i) for i in range(8)], failing_sends={2})
    run(eo, eo_consumer)
    assert sorted(r.seq for r in broker.results()) == list(range(8))


def test_a_failing_commit_and_a_model_outage_still_give_one_result_per_frame() -> None:
    processor, consumer, broker = make([frame_record(i) for i in range(12)], FakeModel(fail_times=2), fail_commits=2)
    run(processor, consumer, rounds=80)
    seqs = [r.seq for r in broker.results()]
    assert sorted(seqs) == list(range(12)) and len(seqs) == 12
    assert broker.aborts >= 2 and processor.metrics.total(m.BATCH_FAILURES, stage="commit") == 2


def test_a_batch_of_dropped_frames_commits_its_offsets_in_a_transaction() -> None:
    consumer = FakeConsumer([frame_record(i, camera="elsewhere") for i in range(4)])
    broker = TransactionalBroker(consumer)
    routing = CameraRouting.model_validate({"overrides": {"elsewhere": {"tasks": []}}})
    processor = StreamProcessor(
        consumer, {Task.CLASSIFICATION: FakeModel()}, routing, kafka_sinks(broker, TOPICS), transactions=broker
    )
    run(processor, consumer, rounds=3)
    assert consumer.committed == {("frames", 0): 4} and broker.visible == [] and broker.commits == 1


def test_a_producer_that_cannot_abort_is_raised_to_be_recreated() -> None:
    processor, consumer, _broker = make([frame_record(i) for i in range(4)], failing_sends={1}, abort_raises=True)
    with pytest.raises(RuntimeError, match="fenced"):  # once the failed send's batch is produced
        for _ in range(2):
            processor.step()
    assert consumer.committed == {}


def test_the_delivery_setting_and_the_transactions_must_agree() -> None:
    consumer = FakeConsumer([])
    broker = TransactionalBroker(consumer)
    args = (consumer, {Task.CLASSIFICATION: FakeModel()}, CameraRouting(), kafka_sinks(broker, TOPICS))
    assert ProcessorSettings().delivery is Delivery.EXACTLY_ONCE, "the default, measured to cost no throughput"
    with pytest.raises(ValueError, match="exactly_once"):
        StreamProcessor.from_settings(*args, ProcessorSettings())
    with pytest.raises(ValueError, match="at_least_once"):
        StreamProcessor.from_settings(*args, ProcessorSettings(delivery="at_least_once"), transactions=broker)
    assert StreamProcessor.from_settings(*args, ProcessorSettings(), transactions=broker).exactly_once
