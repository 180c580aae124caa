"""Property: whatever the records hold, ``StreamProcessor.step`` never raises, and every
record ends in exactly one of: a result, a dead letter, a counted drop."""

from __future__ import annotations

from collections import Counter

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.vlm_core.test_stream import FakeConsumer, FakeModel, FakeProducer, Rec
from vlm_core import metrics as m
from vlm_core.config import Topics
from vlm_core.contracts.frame import Encoding, Frame, Header
from vlm_core.contracts.task import Task
from vlm_core.pipeline import CameraPolicy, CameraRouting
from vlm_core.stream import DLQ_SOURCE_HEADER, StreamProcessor, kafka_sinks

_IMAGE = np.random.default_rng(3).integers(0, 256, (12, 20, 3), dtype=np.uint8)
GOOD = {
    encoding: Frame.from_image(_IMAGE, camera_id="cam", seq=1, capture_ts_ms=1_000, encoding=encoding).to_kafka()
    for encoding in Encoding
}
HEADER_NAMES = [h.value for h in Header]

header_value = st.one_of(
    st.binary(max_size=24),
    st.text(max_size=24).map(str.encode),
    st.integers(min_value=-(2**70), max_value=2**70).map(lambda i: str(i).encode()),
    st.sampled_from([b"jpeg", b"png", b"raw", b"vlm.frame/v1", b"vlm.frame/v9", "камера 📷".encode(), b"\xff\xfe"]),
)


@st.composite
def records(draw: st.DrawFn) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes | None]] | None]:
    base = GOOD[draw(st.sampled_from(list(Encoding)))]
    kind = draw(st.sampled_from(["good", "header", "value", "key", "arbitrary", "quiet"]))
    key: bytes | None = base.key
    value: bytes | None = base.value
    headers: list[tuple[str, bytes | None]] | None = list(base.headers)
    if kind == "header":
        name = draw(st.sampled_from([*HEADER_NAMES, "x-other"]))
        replacement = draw(st.one_of(st.none(), header_value))
        headers = [(n, v) for n, v in headers if n != name]
        if draw(st.booleans()):
            headers.append((name, replacement))
    elif kind == "value":
        cut = draw(st.integers(min_value=0, max_value=len(base.value)))
        value = draw(st.sampled_from([base.value[:cut], base.value + draw(st.binary(max_size=16)), None]))
        if draw(st.booleans()):
            value = draw(st.binary(max_size=64))
    elif kind == "key":
        key = draw(st.one_of(st.none(), st.binary(max_size=16)))
    elif kind == "arbitrary":
        key = draw(st.one_of(st.none(), st.binary(max_size=16)))
        value = draw(st.one_of(st.none(), st.binary(max_size=64)))
        headers = draw(
            st.one_of(st.none(), st.lists(st.tuples(st.sampled_from(HEADER_NAMES), header_value), max_size=8))
        )
    elif kind == "quiet":  # a camera whose policy wants no served task: a counted drop
        key = b"quiet"
        headers = [(n, b"quiet" if n == Header.CAMERA_ID.value else v) for n, v in headers]
    return key, value, headers


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(records(), min_size=1, max_size=12), st.integers(min_value=1, max_value=5))
def test_step_never_raises_and_every_record_ends_exactly_once(
    drawn: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes | None]] | None]], batch_size: int
) -> None:
    recs = [Rec("frames", 0, offset, key, value, headers) for offset, (key, value, headers) in enumerate(drawn)]
    consumer, producer = FakeConsumer(recs), FakeProducer()  # type: ignore[arg-type]
    processor = StreamProcessor(
        consumer,
        {Task.CLASSIFICATION: FakeModel()},
        CameraRouting(overrides={"quiet": CameraPolicy(tasks=(Task.DETECTION,))}),
        kafka_sinks(producer, Topics(results="results", dlq="dlq")),
        batch_size=batch_size,
        clock_ms=lambda: 2_000,
    )
    for _ in range(len(recs) + 5):
        processor.step()
        if consumer.position >= len(recs):
            break
    processor.drain()

    result_offsets = Counter(r.offset for r in producer.results())
    dlq_offsets = Counter(
        int(dict(h)[DLQ_SOURCE_HEADER].decode().rsplit("/", 1)[1]) for t, _k, _v, h in producer.sent if t == "dlq"
    )
    dropped = processor.metrics.total(m.FRAMES_DROPPED)
    assert all(n == 1 for n in result_offsets.values()), "a result twice"
    assert all(n == 1 for n in dlq_offsets.values()), "a dead letter twice"
    assert not set(result_offsets) & set(dlq_offsets), "a record both processed and dead-lettered"
    assert len(result_offsets) + len(dlq_offsets) + dropped == len(recs)
    assert consumer.committed == {("frames", 0): len(recs)}
    assert processor.metrics.total(m.BATCH_FAILURES) == 0
