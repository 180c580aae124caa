"""Property-based fuzzing of every parser that reads bytes from outside: any input raises
only its contract's typed error, never another exception, and never hangs (a deadline per
example). Each parser gets FUZZ_EXAMPLES inputs, both random and mutations of a valid one.
"""

from __future__ import annotations

import json
import zlib
from datetime import timedelta
from typing import Any

import cv2
import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.vlm_core.contracts.test_event import crossing
from tests.vlm_core.contracts.test_result import full_result
from vlm_core.contracts.event import Event, EventError
from vlm_core.contracts.frame import Encoding, Frame, FrameLimits, Header
from vlm_core.contracts.labels import LabeledSample, LabelHeader
from vlm_core.contracts.result import Result
from vlm_core.contracts.task import Task
from vlm_core.contracts.to_label import ToLabel, ToLabelError
from vlm_core.datasets import Sample
from vlm_core.errors import ConfigError, FrameError, LabelError, ResultError
from vlm_core.pipeline import PipelineConfig, load_serve_config
from vlm_core.stream.ports import StateRecord
from vlm_core.stream.tracks import STATE_MAGIC, StateReadError, TrackingStage, decode_state

FUZZ_EXAMPLES = 2000
fuzz = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=timedelta(seconds=5),  # a parser that hangs fails here, not in the suite's timeout
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    database=None,
)

LIMITS = FrameLimits(max_bytes=256 * 1024, max_pixels=640 * 480, max_future_ms=60_000)
NOW_MS = 1_700_000_000_000


def _image() -> np.ndarray:
    rng = np.random.default_rng(3)
    return cv2.GaussianBlur(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), (5, 5), 0)


VALID_FRAME = Frame.from_image(_image(), camera_id="cam-1", seq=7, capture_ts_ms=NOW_MS - 10).to_kafka()
PNG_FRAME = Frame.from_image(
    _image(), camera_id="cam-1", seq=7, capture_ts_ms=NOW_MS - 10, encoding=Encoding.PNG
).to_kafka()


def mutated(data: bytes) -> st.SearchStrategy[bytes]:
    """``data`` truncated, with bytes flipped, or with a random slice spliced in."""
    n = len(data)
    truncated = st.integers(0, n).map(lambda k: data[:k])
    flips = st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, 255)), min_size=1, max_size=12).map(
        lambda changes: _flip(data, changes)
    )
    spliced = st.tuples(st.integers(0, n), st.integers(0, n), st.binary(max_size=64)).map(
        lambda t: data[: min(t[0], t[1])] + t[2] + data[max(t[0], t[1]) :]
    )
    return st.one_of(truncated, flips, spliced)


def _flip(data: bytes, changes: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for i, value in changes:
        out[i] = value
    return bytes(out)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=25,
)


def mutated_document(doc: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """A valid JSON document with one field, anywhere in it, removed or replaced."""
    paths = _paths(doc)

    def change(path: tuple[Any, ...], value: Any, remove: bool) -> dict[str, Any]:
        copy = json.loads(json.dumps(doc))
        parent = copy
        for key in path[:-1]:
            parent = parent[key]
        if remove and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = value
        return copy

    return st.builds(change, st.sampled_from(paths), json_values, st.booleans())


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found: list[tuple[Any, ...]] = []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        found.append((*prefix, key))
        found.extend(_paths(child, (*prefix, key)))
    return found


# -- frames ---------------------------------------------------------------------------------
header_names = st.sampled_from([h.value for h in Header]) | st.text(max_size=12)
header_values = (
    st.binary(max_size=24)
    | st.integers(-(2**70), 2**70).map(lambda i: str(i).encode())
    | st.sampled_from([b"jpeg", b"png", b"raw", b"vlm.frame/v1", b"cam-1", b"", b"48", b"64"])
)


def _headers_with(changes: list[tuple[str, bytes | None]], drop: set[str]) -> list[tuple[str, bytes | None]]:
    table: dict[str, bytes | None] = {k: v for k, v in VALID_FRAME.headers if k not in drop}
    table.update(dict(changes))
    return list(table.items())


frame_headers = st.one_of(
    st.lists(st.tuples(header_names, header_values | st.none()), max_size=10),
    st.builds(
        _headers_with,
        st.lists(st.tuples(header_names, header_values | st.none()), max_size=4),
        st.sets(st.sampled_from([h.value for h in Header]), max_size=3),
    ),
)


@fuzz
@given(
    key=st.none() | st.binary(max_size=16) | st.just(b"cam-1"),
    value=st.none() | st.binary(max_size=64),
    headers=st.none() | frame_headers,
)
def test_frame_metadata_raises_only_frame_errors(key: bytes | None, value: bytes | None, headers: Any) -> None:
    try:
        frame = Frame.from_kafka(key, value, headers, limits=LIMITS, now_ms=NOW_MS)
    except FrameError:
        return
    assert frame.camera_id and frame.width > 0 and frame.height > 0


@fuzz
@given(data=mutated(VALID_FRAME.value) | mutated(PNG_FRAME.value), png=st.booleans())
def test_truncated_and_mutated_images_raise_only_frame_errors(data: bytes, png: bool) -> None:
    record = PNG_FRAME if png else VALID_FRAME
    try:
        frame = Frame.from_kafka(record.key, data, record.headers, limits=LIMITS, now_ms=NOW_MS)
        image = frame.decode(limits=LIMITS)
    except FrameError:
        return
    assert image.shape == (frame.height, frame.width, 3) and image.dtype == np.uint8


# -- labels ---------------------------------------------------------------------------------
VALID_LABEL = LabeledSample.from_sample(
    Sample(_image(), label=1), dataset="pets", sample_id="a/1.png", task=Task.CLASSIFICATION, class_names=("x", "y")
).to_kafka()
label_names = st.sampled_from([h.value for h in LabelHeader]) | st.text(max_size=12)
label_values = header_values | json_values.map(lambda v: json.dumps(v).encode())


def _label_headers(changes: list[tuple[str, bytes | None]]) -> list[tuple[str, bytes | None]]:
    table: dict[str, bytes | None] = dict(VALID_LABEL.headers)
    table.update(dict(changes))
    return list(table.items())


@fuzz
@given(
    key=st.none() | st.binary(max_size=24) | st.just(VALID_LABEL.key),
    value=st.none() | st.just(VALID_LABEL.value) | mutated(VALID_LABEL.value),
    headers=st.none()
    | st.lists(st.tuples(label_names, label_values | st.none()), max_size=10)
    | st.lists(st.tuples(label_names, label_values | st.none()), max_size=4).map(_label_headers),
)
def test_label_records_raise_only_label_errors(key: bytes | None, value: bytes | None, headers: Any) -> None:
    try:
        sample = LabeledSample.from_kafka(key, value, headers)
        decoded = sample.to_sample(sample.classes or ("x", "y"))
    except LabelError:
        return
    assert sample.dataset and sample.sample_id and decoded.image.ndim == 3


# -- results, events, to-label --------------------------------------------------------------
RESULT_DOC = json.loads(full_result().to_bytes())
EVENT_DOC = json.loads(crossing().to_bytes())


@fuzz
@given(
    data=st.binary(max_size=200)
    | json_values.map(lambda v: json.dumps(v).encode())
    | mutated_document(RESULT_DOC).map(lambda d: json.dumps(d).encode())
    | mutated(json.dumps(RESULT_DOC).encode())
)
@example(data=json.dumps(RESULT_DOC).replace('"score": 0.9', '"score": NaN').encode())  # found by CI
@example(data=json.dumps(RESULT_DOC).replace('"score": 0.9', '"score": 1e999').encode())
@example(data=json.dumps(RESULT_DOC).replace('"box": [1.0,', '"box": [0.125,').encode())  # found by CI
def test_results_raise_only_result_errors(data: bytes) -> None:
    try:
        result = Result.from_bytes(data)
    except ResultError:
        return
    wire = result.to_bytes()
    again = Result.from_bytes(wire)
    assert again.to_bytes() == wire  # finer digits than the wire's are rounded once, then stable


@fuzz
@given(
    data=st.binary(max_size=200)
    | mutated_document(EVENT_DOC).map(lambda d: json.dumps(d).encode())
    | mutated(json.dumps(EVENT_DOC).encode())
)
@example(data=json.dumps({**EVENT_DOC, "dwell_s": float("nan")}).encode())
def test_events_raise_only_event_errors(data: bytes) -> None:
    try:
        event = Event.from_bytes(data)
    except EventError:
        return
    assert Event.from_bytes(event.to_bytes()) == event


@fuzz
@given(data=st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()))
def test_to_label_references_raise_only_their_errors(data: bytes) -> None:
    try:
        ToLabel.from_bytes(data)
    except ToLabelError:
        return


# -- tracker state --------------------------------------------------------------------------
def _valid_state() -> bytes:
    """A tracked camera's state record after an object walked across its line."""
    from tests.vlm_core.stream.test_tracks import ROUTING, FakeDetector, frame_record
    from vlm_core.contracts.dlq import FrameRef
    from vlm_core.contracts.result import Result

    stage = TrackingStage(ROUTING)
    for seq in range(8):
        rec = frame_record(seq, "cam", seq, 60 + 10 * seq)
        frame = Frame.from_kafka(rec.key, rec.value, rec.headers, now_ms=10_000)
        detections = FakeDetector()([frame.decode()]).result()[0]
        result = Result("cam", seq, frame.capture_ts_ms, frame.capture_ts_ms, 240, 120, {Task.DETECTION: detections})
        stage.apply(frame, FrameRef("frames", 0, seq), result)
    (record,) = stage.checkpoint()
    assert record.value is not None
    return record.value


VALID_STATE = _valid_state()
state_inputs = st.binary(max_size=200) | st.builds(lambda b: STATE_MAGIC + b, st.binary(max_size=80))


@fuzz
@given(data=state_inputs)
def test_tracker_state_decoding_raises_only_state_read_errors(data: bytes) -> None:
    try:
        decode_state(data)
    except StateReadError:
        return


STATE_DOC = decode_state(VALID_STATE)
STATE_HEADER = VALID_STATE[: VALID_STATE.index(zlib.compress(json.dumps(STATE_DOC, separators=(",", ":")).encode(), 1))]


@fuzz
@given(
    value=state_inputs
    | mutated(VALID_STATE)
    | mutated_document(STATE_DOC).map(lambda d: STATE_HEADER + zlib.compress(json.dumps(d).encode(), 1))
)
@example(value=STATE_HEADER + zlib.compress(json.dumps({**STATE_DOC, "labels": None}).encode(), 1))  # found here
def test_any_tracker_state_record_loads_or_starts_its_camera_fresh(value: bytes) -> None:
    from tests.vlm_core.stream.test_tracks import ROUTING

    stage = TrackingStage(ROUTING)
    loaded = stage.load([StateRecord("cam", 0, value)])  # never raises: counted, started fresh
    assert loaded in (0, 1)


# -- configuration --------------------------------------------------------------------------
@fuzz
@given(
    args=st.dictionaries(
        st.sampled_from(["models", "processor", "cameras", "topics", "active_learning", "bootstrap", "x"]),
        json_values,
        max_size=5,
    )
    | json_values
)
def test_pipeline_config_raises_only_config_errors(args: Any) -> None:
    if not isinstance(args, dict):
        args = {"value": args}
    try:
        PipelineConfig.parse(args)
    except ConfigError:
        return


@fuzz
@given(text=st.text(max_size=300) | json_values.map(lambda v: yaml.safe_dump(v)))
def test_serve_config_files_raise_only_config_errors(tmp_path_factory: pytest.TempPathFactory, text: str) -> None:
    path = tmp_path_factory.getbasetemp() / "fuzz-serve.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        load_serve_config(path)
    except ConfigError:
        return
