"""Tracks that survive: a killed processor, a rebalance and bad state records, on real
Kafka and Ray with a trained detector. Each compares with an uninterrupted run of the
same sequences: same ids for the same objects, same line counts."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from pathlib import Path

import pytest

from services import kafka_io
from services.inference.deploy import processor_stats
from tests.integration.tracking import (
    INTERVAL_MS,
    Outcome,
    Sequence,
    collect,
    detector_registry,
    fresh_topics,
    interleave,
    produce,
    tracked_args,
    tracked_pipeline,
)
from vlm_core import metrics as m
from vlm_core.contracts.task import Task
from vlm_core.metrics import counter_total
from vlm_core.stream.tracks import STATE_MAGIC

# The first run on a machine trains the detector (a few minutes) inside the first test's setup.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

# cam-b and cam-c are keyed to partition 0, cam-a to partition 1 of a two-partition topic.
SEQUENCES = [Sequence("cam-a", 11), Sequence("cam-b", 12), Sequence("cam-c", 13)]
FRAMES = 100
START_MS = int(time.time() * 1000) - 3_600_000


@pytest.fixture(scope="module")
def registry(ray_address: str) -> Path:
    return detector_registry(ray_address)


@pytest.fixture(scope="module")
def frames() -> list:  # type: ignore[type-arg]
    return interleave(*(s.frames(FRAMES, START_MS) for s in SEQUENCES))


@pytest.fixture(scope="module")
def reference(pipeline_env: tuple[str, str], registry: Path, frames: list) -> Outcome:  # type: ignore[type-arg]
    """The sequences through a pipeline that nothing interrupts."""
    ray_address, bootstrap = pipeline_env
    topics = fresh_topics(bootstrap)
    with tracked_pipeline(ray_address, bootstrap, topics, registry):
        produce(bootstrap, topics.frames, frames)
        outcome = collect(bootstrap, topics, len(frames))
    tracked = [i for (c, s) in outcome.results for i in outcome.ids(c, s) if i is not None]
    assert len(set(tracked)) >= 3, "the detector must give the tracker objects to follow"
    assert sum(sum(outcome.line_counts(s.camera_id).values()) for s in SEQUENCES) >= 2
    return outcome


def assert_same_tracks(outcome: Outcome, reference: Outcome, cameras: list[str] | None = None) -> None:
    cameras = cameras or [s.camera_id for s in SEQUENCES]
    for camera in cameras:
        missing = [s for s in range(FRAMES) if (camera, s) not in outcome.results]
        assert not missing, f"{camera}: no result for {missing[:5]}..."
        switched = [s for s in range(FRAMES) if sorted_ids(outcome, camera, s) != sorted_ids(reference, camera, s)]
        assert not switched, f"{camera}: ids differ from the uninterrupted run at frames {switched[:5]}"
        assert outcome.line_counts(camera) == reference.line_counts(camera)


def sorted_ids(outcome: Outcome, camera: str, seq: int) -> list[int]:
    return sorted(i for i in outcome.ids(camera, seq) if i is not None)


def test_a_killed_processor_leaves_its_successor_the_same_ids(
    pipeline_env: tuple[str, str],
    registry: Path,
    frames: list,
    reference: Outcome,  # type: ignore[type-arg]
) -> None:
    ray_address, bootstrap = pipeline_env
    topics = fresh_topics(bootstrap)
    with tracked_pipeline(ray_address, bootstrap, topics, registry) as app:
        produce(bootstrap, topics.frames, frames)
        deadline = time.monotonic() + 180
        stats = processor_stats(app)
        while stats.results_produced < len(frames) // 3 and time.monotonic() < deadline:
            time.sleep(0.2)
            stats = processor_stats(app)
        assert len(frames) // 3 <= stats.results_produced < len(frames), stats
        assert stats.tracked_cameras == len(SEQUENCES) and stats.tracker_state_bytes > 0
        os.kill(stats.pid, signal.SIGKILL)  # the processor replica's process, mid-sequence
        outcome = collect(bootstrap, topics, len(frames), timeout_s=300)
        after = processor_stats(app)
    assert after.pid != stats.pid, "Serve must have replaced the killed replica"
    assert counter_total(after.counters, m.TRACKING_STATE_LOADS) >= 1, "the successor loaded the states"
    assert_same_tracks(outcome, reference)


def test_a_second_processor_takes_half_the_cameras_and_they_keep_their_ids(
    pipeline_env: tuple[str, str],
    registry: Path,
    frames: list,
    reference: Outcome,  # type: ignore[type-arg]
) -> None:
    """Half the sequence through one processor replica; then a second processor joins the
    group (a StreamProcessor in this process on the same model deployment), takes one of
    the two partitions, and the rest of the sequence goes through both."""
    from ray import serve

    from services.inference.processor import model_client
    from services.kafka_io.adapters import KafkaFrameConsumer, KafkaResultProducer, KafkaTransactions
    from services.kafka_io.state import KafkaTrackStateStore
    from vlm_core.pipeline import PipelineConfig
    from vlm_core.stream import StreamProcessor, TrackingStage, kafka_sinks

    ray_address, bootstrap = pipeline_env
    topics = fresh_topics(bootstrap)
    half = len(frames) // 2
    group = f"g-{uuid.uuid4().hex[:8]}"
    with tracked_pipeline(ray_address, bootstrap, topics, registry, group_id=group) as app:
        produce(bootstrap, topics.frames, frames[:half])
        collect(bootstrap, topics, half)
        # The same group, topics and cameras as the running replica's.
        config = PipelineConfig.parse(tracked_args(bootstrap, topics, registry, group))
        handle = serve.get_deployment_handle("Detector", app_name=app).options(method_name="predict")
        # Exactly once, as the replica runs: a transactional producer of its own id.
        producer = KafkaResultProducer(bootstrap, transactional_id=f"{group}.second")
        second: StreamProcessor | None = None
        consumer = KafkaFrameConsumer(bootstrap, topics.frames, config.processor.group_id, on_revoke=lambda: drain())

        def drain() -> None:
            if second is not None:
                second.drain()

        second = StreamProcessor.from_settings(
            consumer,
            {Task.DETECTION: model_client(handle)},
            config.cameras,
            kafka_sinks(producer, config.topics),
            config.processor,
            tracking=TrackingStage(config.cameras),
            state_store=KafkaTrackStateStore(bootstrap, topics.tracks_state, topics.frames, producer),
            transactions=KafkaTransactions(producer, consumer),
        )
        stop = threading.Event()
        runner = threading.Thread(target=second.run, args=(stop.is_set,), daemon=True)
        runner.start()
        try:
            deadline = time.monotonic() + 120
            while not consumer.assignment()[1] and time.monotonic() < deadline:
                time.sleep(0.2)
            moved = {p for _t, p in consumer.assignment()[1]}
            assert len(moved) == 1, f"the second processor should own one of two partitions, has {moved}"
            time.sleep(2)  # the replica's own rejoin settles
            produce(bootstrap, topics.frames, frames[half:])
            outcome = collect(bootstrap, topics, len(frames))
        finally:
            stop.set()
            runner.join(60)
            consumer.close()
            producer.close()
    assert second.results_produced > 0
    assert second.tracking is not None and second.tracking.cameras, "the second processor tracked the moved camera"
    expected = {"cam-a"} if moved == {1} else {"cam-b", "cam-c"}
    assert set(second.tracking.cameras) == expected, "it took over exactly the cameras of its partition"
    assert counter_total(second.metrics.counter_samples(), m.TRACKING_STATE_LOADS) >= len(expected)
    assert_same_tracks(outcome, reference)


def test_a_bad_state_record_starts_that_camera_fresh_and_no_other(
    pipeline_env: tuple[str, str],
    registry: Path,
    frames: list,
    reference: Outcome,  # type: ignore[type-arg]
) -> None:
    ray_address, bootstrap = pipeline_env
    topics = fresh_topics(bootstrap)
    half = len(frames) // 2
    group = f"g-{uuid.uuid4().hex[:8]}"  # the second pipeline goes on from the first one's commits
    with tracked_pipeline(ray_address, bootstrap, topics, registry, keep_topics=True, group_id=group):
        produce(bootstrap, topics.frames, frames[:half])
        collect(bootstrap, topics, half)
    # While no processor runs: cam-a's state becomes garbage, cam-b's an unknown version;
    # cam-c's stays as it was.
    producer = kafka_io.producer(bootstrap)
    producer.send(topics.tracks_state, key=b"cam-a", value=b"\x00not a state record", partition=1).get(timeout=30)
    old = STATE_MAGIC + bytes([0]) + b"an older layout"
    producer.send(topics.tracks_state, key=b"cam-b", value=old, partition=0).get(timeout=30)
    producer.close()
    with tracked_pipeline(ray_address, bootstrap, topics, registry, group_id=group) as app:
        produce(bootstrap, topics.frames, frames[half:])
        outcome = collect(bootstrap, topics, len(frames))
        stats = processor_stats(app)
    restarts = {
        (camera, reason): counter_total(stats.counters, m.TRACKING_STATE_RESTARTS, camera_id=camera, reason=reason)
        for camera in ("cam-a", "cam-b")
        for reason in ("unreadable", "version")
    }
    assert restarts == {("cam-a", "unreadable"): 1, ("cam-a", "version"): 0, ("cam-b", "unreadable"): 0,
                        ("cam-b", "version"): 1}  # fmt: skip
    assert counter_total(stats.counters, m.TRACKING_STATE_RESTARTS, camera_id="cam-c") == 0
    assert_same_tracks(outcome, reference, ["cam-c"])
    for camera in ("cam-a", "cam-b"):
        before = {i for s in range(FRAMES // 2) for i in sorted_ids(outcome, camera, s)}
        fresh = {i for s in range(FRAMES // 2, FRAMES) for i in sorted_ids(outcome, camera, s)}
        assert fresh and min(fresh) > START_MS + INTERVAL_MS * FRAMES, f"{camera}: fresh ids begin at the clock"
        assert not fresh & before, f"{camera}: no id is reused"


def test_the_state_store_refuses_a_state_topic_that_is_not_co_partitioned(kafka_bootstrap: str) -> None:
    from services.kafka_io.adapters import KafkaResultProducer
    from services.kafka_io.state import KafkaTrackStateStore
    from vlm_core.errors import ConfigError

    topics = kafka_io.private_topics(f"t.{uuid.uuid4().hex[:8]}")
    kafka_io.ensure_topics(
        kafka_bootstrap,
        [kafka_io.TopicSpec(topics.frames, 2), kafka_io.TopicSpec(topics.tracks_state, 1, compact=True)],
    )
    producer = KafkaResultProducer(kafka_bootstrap)
    try:
        with pytest.raises(ConfigError, match="must match"):
            KafkaTrackStateStore(kafka_bootstrap, topics.tracks_state, topics.frames, producer)
        with pytest.raises(ConfigError, match="does not exist"):
            KafkaTrackStateStore(kafka_bootstrap, topics.tracks_state + ".missing", topics.frames, producer)
    finally:
        producer.close()
        kafka_io.delete_topics(kafka_bootstrap, [topics.frames, topics.tracks_state])
