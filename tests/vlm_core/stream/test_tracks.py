"""The tracking stage in the StreamProcessor, over in-memory fakes of Kafka and a detector:
track ids in results, events, state that gates the commit, replays, failover, bad state."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from tests.vlm_core.test_stream import Done, FakeConsumer, FakeProducer, Rec
from vlm_core import metrics as m
from vlm_core.config import Topics
from vlm_core.contracts.event import Event, EventType
from vlm_core.contracts.frame import Encoding, Frame
from vlm_core.contracts.result import Detection, Detections, ModelRef, Result
from vlm_core.contracts.task import Task
from vlm_core.pipeline import CameraPolicy, CameraRouting
from vlm_core.stream import StateRecord, StreamProcessor, TrackingStage, kafka_sinks
from vlm_core.stream.tracks import STATE_MAGIC

TOPICS = Topics(results="results", dlq="dlq", to_label="to_label", events="events")
ROUTING = CameraRouting(
    default=CameraPolicy(
        tasks=(Task.DETECTION,),
        tracking={"min_hits": 2},
        analytics={"lines": [{"name": "mid", "points": [[100, 0], [100, 120]]}], "counts_interval_s": 0},
    )
)
NOW_MS = 10_000_000


def frame_record(offset: int, camera: str, seq: int, x: int, partition: int = 0) -> Rec:
    """A frame whose one object sits at ``x``: the fake detector reads it from pixel values."""
    image = np.zeros((120, 240, 3), np.uint8)
    image[0, 0] = (x, 0, 0)
    frame = Frame.from_image(image, camera_id=camera, seq=seq, capture_ts_ms=1_000 + 100 * seq, encoding=Encoding.PNG)
    rec = frame.to_kafka()
    return Rec("frames", partition, offset, rec.key, rec.value, rec.headers)


class FakeDetector:
    def __call__(self, images: list[np.ndarray]) -> Done:
        ref = ModelRef("det", "1")
        out = []
        for img in images:
            x = float(img[0, 0, 0])
            out.append(Detections(ref, (Detection((x, 40.0, x + 30, 70.0), "Bag", 8, 0.9),)))
        return Done(out)


@dataclass
class FakeStateStore:
    topic: dict[str, StateRecord] = field(default_factory=dict)
    fail_next: int = 0
    writes: int = 0

    def load(self, partitions: list[int]) -> list[StateRecord]:
        return [r for r in self.topic.values() if r.partition in partitions]

    def write(self, record: StateRecord) -> Done:
        if self.fail_next:
            self.fail_next -= 1
            return Done(error=TimeoutError("state write not acknowledged"))
        self.writes += 1
        self.topic[record.camera_id] = record
        return Done(True)


@dataclass
class AssignedConsumer(FakeConsumer):
    generation: int = 1
    partitions: frozenset[tuple[str, int]] = frozenset({("frames", 0)})

    def assignment(self) -> tuple[int, frozenset[tuple[str, int]]]:
        return self.generation, self.partitions


def make(records: list[Rec], store: FakeStateStore, producer: FakeProducer | None = None, stage=None):  # type: ignore[no-untyped-def]
    consumer = AssignedConsumer(records)
    producer = producer or FakeProducer()
    metrics = stage.metrics if stage else m.MetricsSink()
    stage = stage or TrackingStage(ROUTING, metrics=metrics, clock_ms=lambda: NOW_MS)
    processor = StreamProcessor(
        consumer,
        {Task.DETECTION: FakeDetector()},
        ROUTING,
        kafka_sinks(producer, TOPICS),
        batch_size=4,
        tracking=stage,
        state_store=store,
        metrics=metrics,
        clock_ms=lambda: 2_000_000,
    )
    return processor, consumer, producer


def drive(processor: StreamProcessor, consumer: FakeConsumer, steps: int = 100) -> None:
    for _ in range(steps):
        processor.step()
        if consumer.position >= len(consumer.records):
            break
    processor.drain()


def walk(camera: str, n: int, start: int = 0, offset: int = 0) -> list[Rec]:
    return [frame_record(offset + i, camera, start + i, 40 + 5 * (start + i)) for i in range(n)]


def ids(producer: FakeProducer) -> dict[int, int | None]:
    out = {}
    for result in producer.results():
        assert result.detection is not None and result.tracking is not None
        out[result.seq] = result.detection.detections[0].track_id
    return out


def events(producer: FakeProducer) -> list[Event]:
    return [Event.from_bytes(v) for t, _k, v, _h in producer.sent if t == "events"]


def test_results_carry_track_ids_and_the_line_crossing_is_an_event() -> None:
    store = FakeStateStore()
    processor, consumer, producer = make(walk("cam", 20), store)
    drive(processor, consumer)
    got = ids(producer)
    assert got[0] is None and {got[s] for s in range(1, 20)} == {1}
    crossed = events(producer)
    assert [(e.type, e.track_id, e.line, e.camera_id) for e in crossed] == [(EventType.LINE_CROSSED, 1, "mid", "cam")]
    assert crossed[0].frame.offset == crossed[0].seq  # the frame that crossed
    assert crossed[0].models["detection"] == ModelRef("det", "1")
    assert Result.from_bytes(producer.sent[0][2]).to_json()["schema"] == "vlm.result/v2"
    assert set(store.topic) == {"cam"} and store.topic["cam"].value.startswith(STATE_MAGIC)
    assert consumer.committed == {("frames", 0): 20}


def test_a_failed_state_write_blocks_the_commit_and_the_retry_replays_the_same_ids() -> None:
    store = FakeStateStore(fail_next=1)
    processor, consumer, producer = make(walk("cam", 12), store)
    for _ in range(3):  # two batches in flight, then the first one's acknowledgements
        processor.step()
    assert consumer.committed == {} and consumer.rewinds == 1
    drive(processor, consumer)
    by_seq: dict[int, set[int | None]] = {}
    for result in producer.results():
        by_seq.setdefault(result.seq, set()).add(result.detection.detections[0].track_id)  # type: ignore[union-attr]
    assert all(len(v) == 1 for v in by_seq.values()), by_seq  # a replayed frame got its first id again
    assert processor.metrics.total(m.TRACKING_REPLAYS, outcome="replayed") >= 1
    assert consumer.committed == {("frames", 0): 12}


def test_a_new_owner_continues_the_ids_and_the_count_without_doubling() -> None:
    frames = walk("cam", 24)
    whole_store = FakeStateStore()
    processor, consumer, reference = make(frames, whole_store)
    drive(processor, consumer)

    store = FakeStateStore()
    first, consumer_a, producer_a = make(frames[:10], store)
    drive(first, consumer_a)
    # The first owner died after its state write of frames 10-13 but before their commit:
    # the new owner loads that state and reads frames 10.. again.
    second_store = FakeStateStore(topic=dict(store.topic))
    pre = make(frames[10:14], second_store)
    drive(pre[0], pre[1])
    second, consumer_b, producer_b = make(frames[10:], FakeStateStore(topic=dict(second_store.topic)))
    drive(second, consumer_b)
    assert {**ids(producer_a), **ids(producer_b)} == ids(reference)
    unique = {e.event_id for e in events(producer_a) + events(producer_b)}
    assert unique == {e.event_id for e in events(reference)}
    assert second.tracking is not None and second.tracking.cameras["cam"].analytics.counts() == (
        processor.tracking.cameras["cam"].analytics.counts()  # type: ignore[union-attr]
    )


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"\x00garbage", "unreadable"),
        (STATE_MAGIC + b"\x00old", "version"),
        (STATE_MAGIC + b"\x01not zlib", "unreadable"),
    ],
)
def test_a_bad_state_record_starts_that_camera_fresh_and_no_other(value: bytes, reason: str) -> None:
    store = FakeStateStore()
    processor, consumer, _ = make(walk("good", 6) + walk("bad", 6, offset=6), store)
    drive(processor, consumer)
    store.topic["bad"] = StateRecord("bad", 0, value)
    resumed, consumer2, producer2 = make(
        walk("good", 4, start=6, offset=12) + walk("bad", 4, start=6, offset=16), store
    )
    drive(resumed, consumer2)
    by_camera: dict[str, set[int | None]] = {}
    for result in producer2.results():
        by_camera.setdefault(result.camera_id, set()).add(result.detection.detections[0].track_id)  # type: ignore[union-attr]
    assert by_camera["good"] == {1}
    fresh = by_camera["bad"] - {None}
    assert fresh and min(fresh) >= NOW_MS, "a fresh start's ids begin above any earlier id"
    assert resumed.metrics.total(m.TRACKING_STATE_RESTARTS, camera_id="bad", reason=reason) == 1
    assert resumed.metrics.total(m.TRACKING_STATE_RESTARTS, camera_id="good") == 0


def test_a_silent_camera_releases_its_tracks_but_not_its_counter() -> None:
    clock = [0.0]
    stage = TrackingStage(ROUTING, monotonic=lambda: clock[0])
    store = FakeStateStore()
    processor, consumer, _ = make(walk("cam", 6), store, stage=stage)
    drive(processor, consumer)
    assert stage.cameras["cam"].tracker.tracks
    clock[0] = 1_000.0
    records = stage.checkpoint()
    assert stage.cameras["cam"].tracker.tracks == [] and stage.cameras["cam"].tracker.next_id == 2
    assert [r.camera_id for r in records] == ["cam"]


def test_untracked_cameras_are_left_alone() -> None:
    routing = CameraRouting(default=CameraPolicy(tasks=(Task.DETECTION,)))
    stage = TrackingStage(routing)
    frame = Frame.from_image(np.zeros((8, 8, 3), np.uint8), camera_id="c", seq=0, capture_ts_ms=1)
    result = Result("c", 0, 1, 2, 8, 8, outputs={Task.DETECTION: Detections(ModelRef("d", "1"), ())})
    from vlm_core.contracts.dlq import FrameRef

    assert stage.apply(frame, FrameRef("f", 0, 0), result) == (result, ())
