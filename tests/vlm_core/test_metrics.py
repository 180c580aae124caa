from __future__ import annotations

import re

from vlm_core import metrics as m


def test_names_follow_prometheus_conventions() -> None:
    names = [d.name for d in m.ALL_METRICS]
    assert len(set(names)) == len(names)
    for d in m.ALL_METRICS:
        assert re.fullmatch(r"vlm_[a-z][a-z0-9_]*", d.name), d.name
        assert all(re.fullmatch(r"[a-z][a-z0-9_]*", t) for t in d.tags), d.tags
        assert (d.kind is m.Kind.COUNTER) == d.name.endswith("_total"), d.name
        if d.kind is m.Kind.HISTOGRAM:
            assert list(d.buckets) == sorted(d.buckets) and d.buckets
        assert d.description


def test_exported_names_carry_ray_prefix() -> None:
    assert m.exported_name(m.FRAMES_PROCESSED) == "ray_vlm_frames_processed_total"


def test_in_memory_sink() -> None:
    sink = m.MetricsSink()
    sink.inc(m.FRAMES_DROPPED, camera_id="a", reason="stale")
    sink.inc(m.FRAMES_DROPPED, 2, camera_id="b", reason="stale")
    sink.inc(m.FRAMES_DROPPED, camera_id="b", reason="no_model")
    assert sink.total(m.FRAMES_DROPPED) == 4
    assert sink.total(m.FRAMES_DROPPED, reason="stale") == 3
    assert sink.total(m.FRAMES_DROPPED, camera_id="b", reason="no_model") == 1


def test_metric_label_keeps_plain_ids_and_escapes_the_rest() -> None:
    assert m.metric_label("cam-1 north_gate.2") == "cam-1 north_gate.2"
    assert m.metric_label("камера-1 📷") == "\\u043a\\u0430\\u043c\\u0435\\u0440\\u0430-1 \\U0001f4f7"
    assert m.metric_label('a\\b"c') == "a\\u005cb\\u0022c"


from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@given(st.text(max_size=40), st.text(max_size=40))
def test_metric_label_is_ascii_and_one_to_one(a: str, b: str) -> None:
    for value in (a, b):
        label = m.metric_label(value)
        label.encode("ascii")  # what Ray's exporter requires
        assert all(0x20 <= ord(ch) < 0x7F for ch in label)
    assert (m.metric_label(a) == m.metric_label(b)) == (a == b)


def test_sinks_store_label_values_and_match_raw_ids() -> None:
    sink = m.MetricsSink()
    sink.inc(m.FRAMES_CONSUMED, 3, camera_id="камера 📷")
    assert sink.total(m.FRAMES_CONSUMED, camera_id="камера 📷") == 3
    (sample,) = sink.counter_samples()
    assert sample.tags == {"camera_id": m.metric_label("камера 📷")}
    assert m.counter_total([sample], m.FRAMES_CONSUMED, camera_id="камера 📷") == 3
