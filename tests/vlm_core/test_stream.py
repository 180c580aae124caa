"""StreamProcessor logic with in-memory fakes of the consumer, producer and models."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from vlm_core import metrics as m
from vlm_core.config import Topics
from vlm_core.contracts.frame import Frame
from vlm_core.contracts.result import Classification, ClassScore, ModelRef, Result
from vlm_core.contracts.task import Task
from vlm_core.errors import FrameDecodeError
from vlm_core.pipeline import CameraPolicy, CameraRouting, DropPolicy, ModelInput
from vlm_core.stream import DLQ_REASON_HEADER, SendRule, StreamProcessor, dlq_reason, kafka_sinks
from vlm_core.stream.processor import ANSWER_POLL_MS, ISOLATED

TOPICS = Topics(results="results", dlq="dlq", to_label="to_label")


@dataclass
class Rec:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] | None


@dataclass
class FakeConsumer:
    records: list[Rec]
    position: int = 0
    committed: dict[tuple[str, int], int] = field(default_factory=dict)
    rewinds: int = 0
    waits: list[int] = field(default_factory=list)
    #: False: the consumer cannot tell its lag yet (no fetch), as kafka-python before one.
    lag_known: bool = True
    #: At most this many records a poll, as a fetch that found only some of them.
    per_poll: int | None = None

    def poll(self, max_records: int, timeout_ms: int) -> list[Rec]:
        self.waits.append(timeout_ms)
        batch = self.records[self.position : self.position + min(max_records, self.per_poll or max_records)]
        self.position += len(batch)
        return batch

    def commit(self, offsets: dict[tuple[str, int], int], wait: bool = True) -> None:
        for tp, offset in offsets.items():
            assert offset >= self.committed.get(tp, 0), "commits must move forward"
            self.committed[tp] = offset

    def rewind(self) -> None:
        self.rewinds += 1
        self.position = min(self.committed.get(("frames", 0), 0), len(self.records))

    def lag(self) -> dict[tuple[str, int], int]:
        if not self.lag_known:
            raise RuntimeError("no fetch yet")
        return {("frames", 0): len(self.records) - self.position}


class Done:
    def __init__(self, value: Any = None, error: BaseException | None = None) -> None:
        self.value, self.error = value, error

    def result(self, timeout: float | None = None) -> Any:
        if self.error:
            raise self.error
        return self.value


@dataclass
class FakeProducer:
    sent: list[tuple[str, bytes | None, bytes, list[tuple[str, bytes]]]] = field(default_factory=list)
    fail_next: int = 0

    def send(self, topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> Done:
        if self.fail_next:
            self.fail_next -= 1
            return Done(error=TimeoutError("broker did not ack"))
        self.sent.append((topic, key, value, headers))
        return Done(True)

    def results(self) -> list[Result]:
        return [Result.from_bytes(v) for t, _k, v, _h in self.sent if t == "results"]


class Running(Done):
    """A model request running while its model's ``running`` is set: asked without
    waiting, it is not answered yet."""

    def __init__(self, answer: Done, model: FakeModel) -> None:
        super().__init__(answer.value, answer.error)
        self.model = model

    def result(self, timeout: float | None = None) -> Any:
        if timeout == 0 and self.model.running:
            raise TimeoutError("still running")
        return super().result(timeout)


class FakeModel:
    def __init__(self, fail_times: int = 0, poison: int | None = None, running: bool = False) -> None:
        self.calls: list[int] = []
        self.fail_times = fail_times
        self.poison = poison  # a pixel value the model always crashes on
        self.running = running  # answers only when waited for

    def __call__(self, images: list[np.ndarray]) -> Done:
        answer = self._answer(images)
        return Running(answer, self) if self.running else answer

    def _answer(self, images: list[np.ndarray]) -> Done:
        self.calls.append(len(images))
        if self.fail_times:
            self.fail_times -= 1
            return Done(error=RuntimeError("replica died"))
        if self.poison is not None and any(int(img[0, 0, 0]) == self.poison for img in images):
            return Done(error=RuntimeError("model crashed on this frame"))
        ref = ModelRef("fake", "1")
        return Done([Classification(ref, (ClassScore("x", 0, float(img.mean() / 255)),)) for img in images])


def frame_record(offset: int, camera: str = "cam", seq: int | None = None, ts: int = 1_000) -> Rec:
    image = np.full((16, 24, 3), offset % 255, np.uint8)
    rec = Frame.from_image(image, camera_id=camera, seq=offset if seq is None else seq, capture_ts_ms=ts).to_kafka()
    return Rec("frames", 0, offset, rec.key, rec.value, rec.headers)


def make(
    records: list[Rec],
    model: FakeModel | None = None,
    routing: CameraRouting | None = None,
    producer: FakeProducer | None = None,
    now_ms: int = 2_000,
    batch_size: int = 4,
    model_input: ModelInput = ModelInput.DECODED,
    monotonic: Callable[[], float] = time.monotonic,
):  # type: ignore[no-untyped-def]
    consumer = FakeConsumer(records)
    producer = producer or FakeProducer()
    model = model or FakeModel()
    processor = StreamProcessor(
        consumer,
        {Task.CLASSIFICATION: model},
        routing or CameraRouting(),
        kafka_sinks(producer, TOPICS),
        batch_size=batch_size,
        max_inflight=2,
        model_input=model_input,
        clock_ms=lambda: now_ms,
        monotonic=monotonic,
    )
    return processor, consumer, producer, model


def run_until_idle(processor: StreamProcessor, consumer: FakeConsumer) -> None:
    for _ in range(100):
        processor.step()
        if consumer.position >= len(consumer.records):
            break
    processor.drain()


def test_every_frame_gets_one_result_in_order_and_one_request_per_batch() -> None:
    processor, consumer, producer, model = make([frame_record(i) for i in range(10)])
    run_until_idle(processor, consumer)
    results = producer.results()
    assert [r.seq for r in results] == list(range(10))
    assert model.calls == [4, 4, 2]  # one request per batch, not per frame
    assert consumer.committed == {("frames", 0): 10}
    assert all(r.classification is not None for r in results)
    assert results[0].timing_ms["total"] == 1000
    assert processor.metrics.total(m.FRAMES_PROCESSED) == 10


def test_each_batch_answered_is_timed_with_its_frames_oldest_capture_and_rule() -> None:
    records = [frame_record(i, ts=1_000 + i) for i in range(10)]
    processor, consumer, _producer, _model = make(records)
    run_until_idle(processor, consumer)
    timings = processor.batch_timings()
    assert [(t.frames, t.oldest_capture_ms, t.sent_ms, t.answered_ms) for t in timings] == [
        (4, 1_000, 2_000, 2_000),
        (4, 1_004, 2_000, 2_000),
        (2, 1_008, 2_000, 2_000),
    ]
    assert {t.rule for t in timings} <= {rule.value for rule in SendRule}
    assert processor.batch_timings(since_ms=2_001) == []
    # A batch that keeps failing is re-run a frame at a time: those batches say so.
    processor, consumer, _producer, _model = make([frame_record(i) for i in range(4)], model=FakeModel(poison=2))
    run_until_idle(processor, consumer)
    assert [t.rule for t in processor.batch_timings()] == [ISOLATED] * 3  # the poisoned frame has no answer


def test_a_poll_that_leaves_frames_behind_keeps_a_running_batch_in_flight() -> None:
    running = FakeModel(running=True)
    processor, _consumer, producer, model = make([frame_record(i) for i in range(10)], model=running)
    processor.step()
    assert model.calls == [4] and producer.results() == []  # six frames wait: poll them first
    processor.step()
    assert [r.seq for r in producer.results()] == [0, 1, 2, 3]  # two in flight: the oldest is sent


def test_an_answered_batch_leaves_after_the_poll_even_with_room_in_flight() -> None:
    processor, _consumer, producer, model = make([frame_record(i) for i in range(10)])
    processor.step()  # six frames left behind, one batch in flight of two: answered all the same
    assert model.calls == [4] and [r.seq for r in producer.results()] == [0, 1, 2, 3]


def test_a_sparse_poll_sends_its_results_in_the_same_step() -> None:
    running = FakeModel(running=True)
    processor, _consumer, producer, model = make([frame_record(i) for i in range(3)], model=running, batch_size=16)
    processor.step()  # three frames, a quarter batch at most, and none left behind
    assert model.calls == [3]
    assert [r.seq for r in producer.results()] == [0, 1, 2]  # not held until the next frame


def test_few_frames_coming_faster_than_the_model_answers_are_not_sparse() -> None:
    records = [frame_record(i) for i in range(4)]
    processor, consumer, producer, model = make(
        records[:2], model=FakeModel(running=True), batch_size=16, monotonic=lambda: 5.0
    )
    processor.step()  # the first frames: sparse, sent at once, and the round trip is measured
    assert [r.seq for r in producer.results()] == [0, 1]
    consumer.records.extend(records[2:])
    processor.step()  # no time since the previous frames: the next come before an answer
    assert [r.seq for r in producer.results()] == [0, 1]
    processor.step()  # an empty poll: the batch is still at the model
    assert [r.seq for r in producer.results()] == [0, 1]
    model.running = False
    processor.step()  # answered: its results leave at the next poll, frames or not
    assert [r.seq for r in producer.results()] == [0, 1, 2, 3]


def test_frames_polled_while_the_model_works_wait_and_go_in_one_request() -> None:
    records = [frame_record(i) for i in range(22)]
    processor, consumer, producer, model = make(
        records[:16], model=FakeModel(running=True), batch_size=16, monotonic=lambda: 5.0
    )
    processor.step()  # a full batch goes at once
    for end in (18, 21):  # then a few frames at a time, faster than the model answers
        consumer.records.extend(records[len(consumer.records) : end])
        processor.step()
    assert model.calls == [16] and producer.results() == []  # decoded, waiting for the model
    model.running = False
    consumer.records.append(records[21])
    processor.step()  # the batch is answered: the waiting frames go, together
    assert model.calls == [16, 6]
    assert [r.seq for r in producer.results()] == list(range(22))
    assert all(r.timing_ms["batching"] == 0 for r in producer.results())  # the fake clock stands still
    assert consumer.committed == {("frames", 0): 16}  # the last batch commits on the next step


class _Ordered(FakeModel):
    """A running model that notes each request sent and each first wait that got its answer."""

    def __init__(self) -> None:
        super().__init__(running=True)
        self.events: list[str] = []

    def __call__(self, images: list[np.ndarray]) -> Done:
        pending = super().__call__(images)
        events, answer, answered = self.events, pending.result, False

        def result(timeout: float | None = None) -> Any:
            nonlocal answered
            value = answer(timeout)  # raises while running and not waited for
            if not answered:
                answered = True
                events.append("answer")
            return value

        pending.result = result  # type: ignore[method-assign]
        events.append("send")
        return pending


@pytest.mark.parametrize(
    ("arriving", "order", "second_rule"),
    [(4, ["send", "answer", "send"], SendRule.ANSWERED), (6, ["send", "send", "answer"], SendRule.FULL)],
)
def test_a_full_batch_joins_the_one_at_the_models_only_while_frames_wait_behind_it(
    arriving: int, order: list[str], second_rule: SendRule
) -> None:
    records = [frame_record(i) for i in range(4 + arriving)]
    model = _Ordered()
    processor, consumer, producer, _model = make(records[:4], model=model, monotonic=lambda: 5.0)
    processor.step()  # a full batch, none left behind and nothing at the models: it goes
    consumer.records.extend(records[4:])
    processor.step()  # full again: kept up with (4 came), it goes once the first is answered;
    # with frames left behind (6 came), it joins the first at the models
    assert model.calls == [4, 4] and model.events == order
    assert [r.seq for r in producer.results()] == [0, 1, 2, 3]
    # Each send is counted by its rule: the first went to idle models.
    sent = {rule: processor.metrics.total(m.BATCHES_SENT, rule=rule.value) for rule in SendRule}
    assert sent == {rule: float(rule is SendRule.ANSWERED) + float(rule is second_rule) for rule in SendRule}


def test_a_failure_after_a_batch_was_produced_commits_it_rather_than_send_it_twice() -> None:
    processor, consumer, producer, _model = make([frame_record(i) for i in range(8)], model=FakeModel(poison=5))
    processor.step()  # offsets 0-3, answered and sent
    processor.step()  # offsets 4-7 fail on frame 5: 0-3 are committed, not read again
    assert consumer.committed == {("frames", 0): 4} and consumer.rewinds == 1
    run_until_idle(processor, consumer)
    seqs = [r.seq for r in producer.results()]
    assert len(seqs) == len(set(seqs))


def test_a_fuller_poll_overlaps_even_when_it_leaves_nothing_behind() -> None:
    running = FakeModel(running=True)
    processor, _consumer, producer, model = make([frame_record(i) for i in range(10)], model=running, batch_size=16)
    processor.step()
    assert model.calls == [10] and producer.results() == []  # the next frames come while it runs
    running.running = False
    processor.step()  # answered: an empty poll finishes it
    assert [r.seq for r in producer.results()] == list(range(10))


def test_a_poll_with_a_batch_at_the_model_waits_only_until_it_is_due() -> None:
    running = FakeModel(running=True)
    processor, consumer, producer, _model = make([frame_record(i) for i in range(10)], model=running, batch_size=16)
    processor.step()
    processor.step()
    processor.step()
    assert consumer.waits[0] == processor.poll_timeout_ms  # nothing in flight
    # A batch at the model and no round trip measured yet: it is due now, so the polls are short.
    assert consumer.waits[1:] == [ANSWER_POLL_MS, ANSWER_POLL_MS]
    assert producer.results() == []
    running.running = False
    processor.step()
    assert [r.seq for r in producer.results()] == list(range(10))
    processor.step()
    assert consumer.waits[-1] == processor.poll_timeout_ms  # none in flight again


def test_a_batch_the_model_never_answers_fails_after_the_model_timeout() -> None:
    running = FakeModel(running=True)
    processor, consumer, producer, _model = make([frame_record(i) for i in range(3)], model=running, batch_size=16)
    processor.model_timeout_s = 0.05
    consumer.lag_known = False  # cannot tell: not sparse, the batch stays in flight

    def timed_out(timeout: float | None = None) -> Any:
        if timeout is not None and timeout > 0:
            raise AssertionError(f"waited {timeout} s more for an overdue request")
        raise TimeoutError("no answer")

    processor.step()
    assert producer.results() == [] and processor.metrics.total(m.BATCH_FAILURES) == 0
    request = processor._inflight[0].requests[Task.CLASSIFICATION][1]
    request.result = timed_out  # type: ignore[method-assign]
    time.sleep(0.06)
    processor.step()  # overdue: produced, its request fails without another wait, the batch is retried
    assert processor.metrics.total(m.BATCH_FAILURES) == 1 and consumer.rewinds == 1


def test_a_consumer_that_cannot_tell_its_lag_overlaps_as_when_behind() -> None:
    running = FakeModel(running=True)
    processor, consumer, producer, model = make([frame_record(i) for i in range(3)], model=running, batch_size=16)
    consumer.lag_known = False
    processor.step()
    assert model.calls == [3] and producer.results() == []
    running.running = False
    processor.step()
    assert [r.seq for r in producer.results()] == [0, 1, 2]


def test_commit_happens_only_after_ack() -> None:
    producer = FakeProducer(fail_next=1)
    processor, consumer, producer, _ = make([frame_record(i) for i in range(4)], producer=producer)
    processor.step()
    processor.step()
    assert consumer.committed == {}  # the failed ack blocked the commit ...
    assert consumer.rewinds == 1  # ... and the batch is read again
    run_until_idle(processor, consumer)
    assert consumer.committed == {("frames", 0): 4}
    assert sorted({r.seq for r in producer.results()}) == [0, 1, 2, 3]
    assert processor.metrics.total(m.BATCH_FAILURES, stage="produce ack") == 1


def test_model_failure_rewinds_and_retries() -> None:
    processor, consumer, producer, _model = make([frame_record(i) for i in range(4)], model=FakeModel(fail_times=1))
    run_until_idle(processor, consumer)
    run_until_idle(processor, consumer)
    assert sorted(r.seq for r in producer.results()) == [0, 1, 2, 3]
    assert consumer.rewinds == 1


def test_bad_frames_go_to_dlq_and_the_rest_continue() -> None:
    records = [frame_record(0), frame_record(1), frame_record(2)]
    records[1] = Rec("frames", 0, 1, records[1].key, b"\xff\xd8\xff garbage", records[1].headers)
    records.append(Rec("frames", 0, 3, b"cam", b"", None))
    processor, consumer, producer, _ = make(records)
    run_until_idle(processor, consumer)
    assert [r.seq for r in producer.results()] == [0, 2]
    dlq = [(k, h) for t, k, _v, h in producer.sent if t == "dlq"]
    assert [dlq_reason(h) for _k, h in dlq] == ["undecodable", "bad_header"]
    assert all(any(name == DLQ_REASON_HEADER for name, _ in h) for _k, h in dlq)
    assert consumer.committed == {("frames", 0): 4}
    assert processor.metrics.total(m.FRAMES_DEAD_LETTERED) == 2


@pytest.mark.parametrize(("policy", "expected"), [(DropPolicy.DROP_STALE, 0), (DropPolicy.PROCESS_ALL, 5)])
def test_drop_policy(policy: DropPolicy, expected: int) -> None:
    routing = CameraRouting(default=CameraPolicy(drop_policy=policy, max_age_ms=100))
    processor, consumer, producer, _ = make([frame_record(i, ts=0) for i in range(5)], routing=routing, now_ms=5_000)
    run_until_idle(processor, consumer)
    assert len(producer.results()) == expected
    assert processor.metrics.total(m.FRAMES_DROPPED, reason="stale") == 5 - expected
    assert processor.metrics.total(m.FRAMES_CONSUMED) == 5  # read from the topic, dropped or not
    assert consumer.committed == {("frames", 0): 5}  # dropped frames are done, not redelivered


def test_camera_routing_selects_tasks() -> None:
    routing = CameraRouting(overrides={"quiet": CameraPolicy(tasks=(Task.DETECTION,))})
    records = [frame_record(0, "loud"), frame_record(1, "quiet"), frame_record(2, "loud")]
    processor, consumer, producer, model = make(records, routing=routing)
    run_until_idle(processor, consumer)
    assert [r.camera_id for r in producer.results()] == ["loud", "loud"]  # quiet wants no served task
    assert model.calls == [2]
    assert processor.metrics.total(m.FRAMES_DROPPED, reason="no_model") == 1
    assert processor.metrics.total(m.FRAMES_CONSUMED) == 3


def test_a_camera_routed_to_no_task_is_left_to_another_pipeline() -> None:
    routing = CameraRouting(overrides={"theirs": CameraPolicy(tasks=())})
    records = [frame_record(0, "ours"), frame_record(1, "theirs")]
    processor, consumer, producer, _model = make(records, routing=routing)
    run_until_idle(processor, consumer)
    assert [r.camera_id for r in producer.results()] == ["ours"]
    assert processor.metrics.total(m.FRAMES_DROPPED, reason="not_routed") == 1
    assert processor.metrics.total(m.FRAMES_DROPPED, reason="no_model") == 0


def test_a_frame_the_model_always_fails_on_is_dead_lettered_alone_and_the_stream_goes_on() -> None:
    # offsets 4..7 form the second batch; frame 5 crashes the model every time
    records = [frame_record(i) for i in range(12)]
    processor, consumer, producer, _model = make(records, model=FakeModel(poison=5))
    for _ in range(20):
        run_until_idle(processor, consumer)
        if consumer.committed.get(("frames", 0)) == 12:
            break
    assert consumer.committed == {("frames", 0): 12}
    assert sorted({r.seq for r in producer.results()}) == [s for s in range(12) if s != 5]
    dlq = [(v, h) for t, _k, v, h in producer.sent if t == "dlq"]
    assert [dlq_reason(h) for _v, h in dlq] == ["model_error"]
    assert dict(dlq[0][1])["vlm-dlq-source"] == b"frames/0/5" and dlq[0][0] == records[5].value
    assert processor.metrics.total(m.FRAMES_DEAD_LETTERED, reason="model_error") == 1
    assert processor.metrics.total(m.BATCH_FAILURES) == 3
    assert processor.metrics.total(m.BATCHES_ISOLATED, stage="classification model") == 1


def test_low_confidence_results_are_sampled_to_label_rate_limited() -> None:
    import json

    from vlm_core.contracts.to_label import TO_LABEL_SCHEMA, ToLabel
    from vlm_core.pipeline import ActiveLearningSettings

    records = [frame_record(i) for i in range(8)] + [frame_record(200 + i) for i in range(4)]
    consumer, producer, clock = FakeConsumer(records), FakeProducer(), {"now": 2_000}
    sink = m.MetricsSink()
    settings = ActiveLearningSettings(enabled=True, score_threshold=0.5, max_per_minute=3)
    processor = StreamProcessor(
        consumer,
        {Task.CLASSIFICATION: FakeModel()},  # score = pixel value / 255
        CameraRouting(),
        kafka_sinks(producer, TOPICS, active_learning=settings, metrics=sink, clock_ms=lambda: clock["now"]),
        metrics=sink,
        batch_size=4,
        clock_ms=lambda: clock["now"],
    )
    processor.step()  # offsets 0-3, answered at once
    clock["now"] += 61_000  # a minute later the budget is back
    run_until_idle(processor, consumer)
    sampled = [json.loads(v) for t, _k, v, _h in producer.sent if t == "to_label"]
    assert len(producer.results()) == 12
    # offsets 0-2 in the first minute; 4-7 and the confident 200+ frames (score 0.78) are not
    # all taken: 3 per minute, and confident results never.
    assert [s["frame"]["offset"] for s in sampled] == [0, 1, 2, 4, 5, 6]
    first = sampled[0]
    assert first["schema"] == TO_LABEL_SCHEMA and first["frame"]["topic"] == "frames"
    assert first["camera_id"] == "cam" and first["models"] == {"classification": "fake@1"}
    assert first["scores"]["classification"] < 0.5
    assert sink.counters[(m.TO_LABEL_SAMPLED.name, (("task", "classification"),))] == 6
    parsed = ToLabel.from_bytes(json.dumps(first).encode())  # the documents meet their schema
    assert parsed.frame.offset == 0 and parsed.models == {"classification": "fake@1"}
    # The prediction travels with the reference, for a labelling tool's pre-annotation.
    assert parsed.prediction["classification"]["top_k"][0]["score"] == first["scores"]["classification"]
    assert parsed.frame_size is not None and parsed.ref == f"cam:{first['seq']}"
    v1 = {k: v for k, v in first.items() if k not in ("prediction", "frame_size")} | {"schema": "vlm.to_label/v1"}
    assert ToLabel.from_bytes(json.dumps(v1).encode()).prediction == {}  # v1 is still read


def test_active_learning_off_by_default_sends_nothing_to_label() -> None:
    processor, consumer, producer, _ = make([frame_record(i) for i in range(5)])
    run_until_idle(processor, consumer)
    assert not [t for t, *_ in producer.sent if t == "to_label"]


class ClientRaisingOn:
    """A model client whose own code (not the model) raises on one frame's pixels."""

    def __init__(self, pixel: int) -> None:
        self.pixel = pixel
        self.inner = FakeModel()

    def __call__(self, images: list[np.ndarray]) -> Done:
        if any(int(img[0, 0, 0]) == self.pixel for img in images):
            raise UnicodeEncodeError("ascii", "📷", 0, 1, "ordinal not in range(128)")
        return self.inner(images)


class MetricsRaisingOn(m.MetricsSink):
    """A metrics sink that rejects one camera's label, as Ray's exporter rejected non-ASCII tags."""

    def __init__(self, camera_tag: str) -> None:
        super().__init__()
        self.camera_tag = camera_tag

    def inc(self, metric: m.MetricDef, value: float = 1.0, **tags: str) -> None:
        if tags.get("camera_id") == self.camera_tag:
            raise UnicodeEncodeError("ascii", self.camera_tag, 0, 1, "ordinal not in range(128)")
        super().inc(metric, value, **tags)


def run_to_end(processor: StreamProcessor, consumer: FakeConsumer, rounds: int = 30) -> None:
    for _ in range(rounds):
        run_until_idle(processor, consumer)
        if consumer.committed.get(("frames", 0)) == len(consumer.records):
            return
    raise AssertionError(f"stalled at {consumer.committed}")


def test_a_client_error_on_one_frame_dead_letters_it_as_internal_error() -> None:
    records = [frame_record(i) for i in range(10)]
    processor, consumer, producer, _ = make(records, model=ClientRaisingOn(pixel=6))  # type: ignore[arg-type]
    run_to_end(processor, consumer)
    assert sorted(r.seq for r in producer.results()) == [s for s in range(10) if s != 6]
    dlq = [h for t, _k, _v, h in producer.sent if t == "dlq"]
    assert [dlq_reason(h) for h in dlq] == ["internal_error"]
    assert b"UnicodeEncodeError" in dict(dlq[0])["vlm-dlq-error"]


def test_a_metrics_sink_failing_on_one_camera_dead_letters_its_frame_and_the_rest_flow() -> None:
    records = [frame_record(i, camera="ok") for i in range(6)]
    records.insert(3, Rec("frames", 0, 3, *_fields(frame_record(3, camera="bad"))))
    records = [Rec("frames", 0, i, r.key, r.value, r.headers) for i, r in enumerate(records)]
    consumer, producer = FakeConsumer(records), FakeProducer()
    processor = StreamProcessor(
        consumer,
        {Task.CLASSIFICATION: FakeModel()},
        CameraRouting(),
        kafka_sinks(producer, TOPICS),
        metrics=MetricsRaisingOn("bad"),
        batch_size=4,
        clock_ms=lambda: 2_000,
    )
    run_to_end(processor, consumer)
    assert [r.camera_id for r in producer.results()] == ["ok"] * 6
    dlq = [h for t, _k, _v, h in producer.sent if t == "dlq"]
    assert [dlq_reason(h) for h in dlq] == ["internal_error"]
    assert dict(dlq[0])["vlm-dlq-source"] == b"frames/0/3"
    assert consumer.rewinds == 0, "a metrics failure is the record's, not the batch's"


def _fields(rec: Rec) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes]] | None]:
    return rec.key, rec.value, rec.headers


def test_retried_batches_never_dead_letter_twice() -> None:
    records = [frame_record(i) for i in range(8)]
    records[1] = Rec("frames", 0, 1, records[1].key, b"not an image", records[1].headers)
    processor, consumer, producer, _ = make(records, model=FakeModel(fail_times=2))
    run_to_end(processor, consumer)
    assert consumer.rewinds >= 1  # the batch holding the bad frame was read again
    dlq = [h for t, _k, _v, h in producer.sent if t == "dlq"]
    assert [dict(h)["vlm-dlq-source"] for h in dlq] == [b"frames/0/1"]
    assert processor.metrics.total(m.FRAMES_DEAD_LETTERED) == 1
    assert sorted(r.seq for r in producer.results()) == [0, 2, 3, 4, 5, 6, 7]


def test_a_model_that_is_down_dead_letters_nothing_and_recovers() -> None:
    sleeps: list[float] = []
    records = [frame_record(i) for i in range(8)]
    consumer, producer = FakeConsumer(records), FakeProducer()
    processor = StreamProcessor(
        consumer,
        {Task.CLASSIFICATION: FakeModel(fail_times=12)},  # every frame fails for a while
        CameraRouting(),
        kafka_sinks(producer, TOPICS),
        batch_size=4,
        clock_ms=lambda: 2_000,
        sleep=sleeps.append,
    )
    run_to_end(processor, consumer, rounds=60)
    assert sorted(r.seq for r in producer.results()) == list(range(8))
    assert not [t for t, *_ in producer.sent if t == "dlq"], "a model outage is not a poison frame"
    assert sleeps and max(sleeps) <= 5.0, "retries back off instead of spinning"


def test_a_result_that_cannot_be_serialised_is_dead_lettered_alone() -> None:
    class NanModel(FakeModel):
        def __call__(self, images: list[np.ndarray]) -> Done:
            ref = ModelRef("fake", "1")
            return Done(
                [
                    Classification(ref, (ClassScore("x", 0, float("nan") if int(img[0, 0, 0]) == 2 else 0.5),))
                    for img in images
                ]
            )

    processor, consumer, producer, _ = make([frame_record(i) for i in range(5)], model=NanModel())
    run_to_end(processor, consumer)
    assert sorted(r.seq for r in producer.results()) == [0, 1, 3, 4]
    dlq = [h for t, _k, _v, h in producer.sent if t == "dlq"]
    assert [dlq_reason(h) for h in dlq] == ["internal_error"]


def test_restart_window_reports_a_crash_loop_and_forgets_old_restarts() -> None:
    from vlm_core.stream import RestartWindow

    now = {"t": 0.0}
    window = RestartWindow(max_restarts=2, window_s=60, clock=lambda: now["t"])
    for _ in range(2):
        window.record()
        now["t"] += 10
    assert not window.crash_looping()
    window.record()
    assert window.crash_looping() and window.recent() == 3
    now["t"] += 61
    assert not window.crash_looping() and window.recent() == 0 and window.total == 3


def test_the_stage_profile_counts_every_stage_of_every_frame_and_batch() -> None:
    processor, consumer, _producer, _ = make([frame_record(i) for i in range(10)])
    run_until_idle(processor, consumer)
    stages = processor.profile.snapshot()
    per_frame = {"parse", "route", "decode", "assemble", "serialise"}
    assert {stage: stages[stage].calls for stage in per_frame} == dict.fromkeys(per_frame, 10)
    assert stages["produce"].calls == 10 * len(processor.sinks.results)  # once per sink
    per_batch = {"serve call", "model wait", "ack", "commit"}
    assert {stage: stages[stage].calls for stage in per_batch} == dict.fromkeys(per_batch, 3)
    assert stages["poll"].calls >= 3
    assert all(t.wall_s >= 0 and t.cpu_s >= 0 for t in stages.values())


class DecodingModel(FakeModel):
    """A replica serving ``model_input: encoded``: it gets checked frames and decodes them;
    its codec refuses the frame of seq ``refuse``."""

    def __init__(self, refuse: int) -> None:
        super().__init__()
        self.refuse = refuse
        self.inputs: list[type] = []

    def __call__(self, frames: list[Frame]) -> Done:  # type: ignore[override]
        self.inputs.extend(type(f) for f in frames)
        if any(f.seq == self.refuse for f in frames):
            return Done(error=FrameDecodeError("OpenCV could not decode the jpeg bytes"))
        return super().__call__([f.pixels() for f in frames])


def test_encoded_model_input_sends_checked_frames_and_dead_letters_what_the_replica_cannot_decode() -> None:
    records = [frame_record(i) for i in range(12)]
    model = DecodingModel(refuse=5)
    processor, consumer, producer, _ = make(records, model=model, model_input=ModelInput.ENCODED)
    run_until_idle(processor, consumer)
    assert set(model.inputs) == {Frame}
    assert consumer.committed == {("frames", 0): 12}
    assert sorted({r.seq for r in producer.results()}) == [s for s in range(12) if s != 5]
    dlq = [h for t, _k, _v, h in producer.sent if t == "dlq"]
    assert [dlq_reason(h) for h in dlq] == [FrameDecodeError.reason]
    # the frame's own fault: isolated at once, not retried as if a replica were down
    assert processor.metrics.total(m.BATCH_FAILURES) == 1
    assert processor.metrics.total(m.BATCHES_ISOLATED, stage="classification model") == 1
    assert "check" in processor.profile.snapshot() and "decode" not in processor.profile.snapshot()


def test_encoded_model_input_still_refuses_a_cut_off_frame_before_any_model_sees_it() -> None:
    records = [frame_record(i) for i in range(4)]
    cut = records[2]
    records[2] = Rec(cut.topic, cut.partition, cut.offset, cut.key, cut.value[: len(cut.value) // 2], cut.headers)
    model = DecodingModel(refuse=-1)
    processor, consumer, producer, _ = make(records, model=model, model_input=ModelInput.ENCODED)
    run_until_idle(processor, consumer)
    assert model.calls == [3]
    assert [dlq_reason(h) for t, _k, _v, h in producer.sent if t == "dlq"] == [FrameDecodeError.reason]
    assert processor.metrics.total(m.BATCH_FAILURES) == 0


def test_frames_trickling_in_while_the_model_works_are_held_on_the_broker_until_it_is_nearly_due() -> None:
    records = [frame_record(i) for i in range(8)]
    processor, consumer, producer, model = make(
        records[:2], model=FakeModel(running=True), batch_size=16, monotonic=lambda: 5.0
    )
    processor.step()  # sparse: sent and answered at once
    processor._round_trip_s = 0.5  # the models answer in about half a second
    consumer.records.extend(records[2:4])
    processor.step()  # faster than the models answer: trickling; nothing in flight, so they go
    assert model.calls == [2, 2]
    consumer.records.extend(records[4:6])
    processor.step()  # held: waits on the batch in flight, not on the next frames
    assert processor.profile.snapshot()["hold"].calls == 1
    assert consumer.waits[-1] == 0  # answered during the hold: the poll takes what is fetched
    assert model.calls == [2, 2]  # what came during the hold waits for the next poll's frames
    model.running = False
    consumer.records.extend(records[6:8])
    processor.step()  # answered during the next hold: its results leave at once
    assert [r.seq for r in producer.results()] == [0, 1, 2, 3]
    assert model.calls == [2, 2]  # the frames of the hold are still on their way
    processor.step()  # the second poll after it, short: nothing more came, the four go together
    assert consumer.waits[-1] == ANSWER_POLL_MS
    assert model.calls == [2, 2, 4]
    processor.step()
    assert [r.seq for r in producer.results()] == list(range(8))


def test_no_hold_while_frames_are_left_behind_on_the_broker() -> None:
    records = [frame_record(i) for i in range(10)]
    processor, consumer, _producer, _model = make(
        records[:2], model=FakeModel(running=True), batch_size=16, monotonic=lambda: 5.0
    )
    processor.step()
    processor._round_trip_s = 0.5
    consumer.per_poll = 2
    consumer.records.extend(records[2:])
    for _ in range(3):  # a few frames a poll, but more behind them each time: not a trickle
        processor.step()
    assert "hold" not in processor.profile.snapshot()
    assert consumer.position == 8


def test_frames_found_after_a_hold_are_not_sparse_however_long_it_lasted() -> None:
    records = [frame_record(i) for i in range(6)]
    clock = [5.0]
    processor, consumer, producer, model = make(
        records[:2], model=FakeModel(running=True), batch_size=16, monotonic=lambda: clock[0]
    )
    processor.step()  # sparse: sent and answered at once
    processor._round_trip_s = 0.5
    consumer.records.extend(records[2:4])
    processor.step()  # trickling: in flight
    clock[0] += 5.0  # by their gap alone, the next frames would be sparse
    consumer.records.extend(records[4:6])
    processor.step()
    assert processor.profile.snapshot()["hold"].calls == 1
    assert [r.seq for r in producer.results()] == [0, 1]  # not finished as if sparse
    assert model.calls == [2, 2]


class Busy(Running):
    """A model request that stays unanswered, waited for or not, while its model runs."""

    def result(self, timeout: float | None = None) -> Any:
        if self.model.running:
            raise TimeoutError("still running")
        return Done.result(self, timeout)


class BusyModel(FakeModel):
    def __call__(self, images: list[np.ndarray]) -> Done:
        return Busy(self._answer(images), self) if self.running else self._answer(images)


def test_a_hold_ends_before_the_batch_is_due_and_the_next_poll_fetches_what_came() -> None:
    records = [frame_record(i) for i in range(6)]
    processor, consumer, producer, model = make(
        records[:2], model=BusyModel(running=True), batch_size=16, monotonic=lambda: 5.0
    )
    model.running = False
    processor.step()  # sparse: sent and answered at once
    model.running = True
    processor._round_trip_s = 0.03  # a hold of at most 20 ms: HOLD_LEAD_MS before it is due
    consumer.records.extend(records[2:4])
    processor.step()  # trickling: in flight
    consumer.records.extend(records[4:6])
    processor.step()  # held until nearly due, unanswered
    assert processor.profile.snapshot()["hold"].calls == 1
    assert consumer.waits[-1] == ANSWER_POLL_MS
    assert model.calls == [2, 2] and [r.seq for r in producer.results()] == [0, 1]
