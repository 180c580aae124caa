"""1,000 frames through the real broker, 4 partitions, consumed by a consumer group."""

from __future__ import annotations

import time
import uuid
from collections import Counter

import numpy as np
import pytest

from services import kafka_io
from vlm_core.contracts.frame import Frame

pytestmark = pytest.mark.integration

CAMERAS = tuple(f"cam-{i:02d}" for i in range(16))
TOTAL = 1000


def test_thousand_frames_exactly_once(kafka_bootstrap: str, topic_name: str) -> None:
    kafka_io.ensure_topics(kafka_bootstrap, [kafka_io.TopicSpec(topic_name, partitions=4)])
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    producer = kafka_io.producer(kafka_bootstrap)
    futures = []
    for i in range(TOTAL):
        camera = CAMERAS[i % len(CAMERAS)]
        image = np.roll(base, i, axis=1)
        frame = Frame.from_image(image, camera_id=camera, seq=i // len(CAMERAS), capture_ts_ms=i)
        futures.append(kafka_io.send_frame(producer, topic_name, frame))
    producer.flush()
    metadata = [f.get(timeout=30) for f in futures]
    producer.close()
    assert {m.partition for m in metadata} == {0, 1, 2, 3}, "frames must spread over all 4 partitions"
    # One camera stays on one partition.
    partition_of: dict[str, set[int]] = {}
    for i, m in enumerate(metadata):
        partition_of.setdefault(CAMERAS[i % len(CAMERAS)], set()).add(m.partition)
    assert all(len(p) == 1 for p in partition_of.values())

    group = f"test-group-{uuid.uuid4().hex[:8]}"
    consumer = kafka_io.consumer(kafka_bootstrap, topic_name, group_id=group)
    seen: Counter[tuple[str, int]] = Counter()
    last_seq: dict[str, int] = {}
    deadline = time.monotonic() + 60
    try:
        while sum(seen.values()) < TOTAL and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=1000).values():
                for rec in records:
                    frame = Frame.from_kafka(rec.key, rec.value, rec.headers)
                    image = frame.decode()
                    assert image.shape == (48, 64, 3)
                    seen[(frame.camera_id, frame.seq)] += 1
                    assert frame.seq > last_seq.get(frame.camera_id, -1), "per-camera order must hold"
                    last_seq[frame.camera_id] = frame.seq
            consumer.commit()
    finally:
        consumer.close()
    expected = {(CAMERAS[i % len(CAMERAS)], i // len(CAMERAS)) for i in range(TOTAL)}
    assert set(seen) == expected
    assert all(count == 1 for count in seen.values())


def test_a_paced_camera_that_fails_ends_the_wait_for_its_results(kafka_bootstrap: str, topic_name: str) -> None:
    from kafka.errors import MessageSizeTooLargeError

    from services.bench import PacedCamera
    from vlm_core.contracts.frame import Encoding

    kafka_io.ensure_topics(kafka_bootstrap, [kafka_io.TopicSpec(topic_name, partitions=1)])
    small = Frame.from_image(np.zeros((24, 32, 3), np.uint8), camera_id="cam", seq=0, capture_ts_ms=0)
    noise = np.random.default_rng(1).integers(0, 256, (1500, 4000, 3), dtype=np.uint8)  # 18 MB as a PNG: over 16 MB
    too_big = Frame.from_image(noise, camera_id="cam", seq=1, capture_ts_ms=0, encoding=Encoding.PNG)
    camera = PacedCamera([small, too_big], rate=10)
    camera.start(kafka_bootstrap, topic_name)
    started = time.monotonic()
    expected = len(camera.frames) + camera.warmup_results
    kafka_io.read_records(kafka_bootstrap, topic_name, expected, timeout_s=120, give_up=camera.failed)
    assert time.monotonic() - started < 60, "the reader gave up with the camera"
    with pytest.raises(MessageSizeTooLargeError):
        camera.stop()
    records, _ends = kafka_io.read_to_end(kafka_bootstrap, topic_name)
    cameras = [Frame.from_kafka(r.key, r.value, r.headers).camera_id for r in records]
    assert cameras == ["cam-warmup", "cam"], "the warm-up frame, acknowledged before the clock, then the paced one"


def test_a_paced_camera_whose_warmup_frame_is_refused_fails_at_start(kafka_bootstrap: str, topic_name: str) -> None:
    from kafka.errors import MessageSizeTooLargeError

    from services.bench import PacedCamera
    from vlm_core.contracts.frame import Encoding

    kafka_io.ensure_topics(kafka_bootstrap, [kafka_io.TopicSpec(topic_name, partitions=1)])
    noise = np.random.default_rng(1).integers(0, 256, (1500, 4000, 3), dtype=np.uint8)
    too_big = Frame.from_image(noise, camera_id="cam", seq=0, capture_ts_ms=0, encoding=Encoding.PNG)
    with pytest.raises(MessageSizeTooLargeError):
        PacedCamera([too_big], rate=10).start(kafka_bootstrap, topic_name)


def test_a_reader_reads_on_from_where_the_last_read_ended(kafka_bootstrap: str, topic_name: str) -> None:
    kafka_io.ensure_topics(kafka_bootstrap, [kafka_io.TopicSpec(topic_name, partitions=2)])
    producer = kafka_io.producer(kafka_bootstrap)

    def send(first: int, count: int) -> None:
        for i in range(first, first + count):
            producer.send(topic_name, key=f"cam-{i % 3}".encode(), value=str(i).encode())
        producer.flush()

    send(0, 6)
    first = kafka_io.read_records(kafka_bootstrap, topic_name, 6, timeout_s=60)
    send(6, 4)
    later = kafka_io.read_records(
        kafka_bootstrap, topic_name, 4, timeout_s=60, linger_ms=500, after=kafka_io.next_offsets(first)
    )
    producer.close()
    assert sorted(int(r.value) for r in first) == list(range(6))
    assert sorted(int(r.value) for r in later) == list(range(6, 10)), "only what came after the first read"
