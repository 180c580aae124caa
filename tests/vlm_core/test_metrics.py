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
