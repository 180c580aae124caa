"""Zones and lines over confirmed tracks: directions, hysteresis, dwell, counts, state."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from vlm_core.contracts.event import EventType
from vlm_core.pipeline import AnalyticsSettings, CameraPolicy
from vlm_core.stream.analytics import SceneAnalytics, TrackedObject

W, H = 200, 100
LINE = {"name": "door", "points": [[100, 0], [100, 100]]}
ZONE = {"name": "shelf", "polygon": [[120, 0], [200, 0], [200, 100], [120, 100]], "dwell_threshold_s": 1.0}


def obj(x: float, track: int = 1, label: str = "Bag") -> TrackedObject:
    """A 20 px box whose bottom centre is at (x, 60)."""
    return TrackedObject(track, 8, label, (x - 10, 40, x + 10, 60))


def run(analytics: SceneAnalytics, xs: list[float], track: int = 1, start_ms: int = 0) -> list:
    out = []
    for t, x in enumerate(xs):
        out += analytics.update([obj(x, track)], [], start_ms + t * 100, W, H)
    return out


def test_a_line_crossing_has_a_direction() -> None:
    analytics = SceneAnalytics(AnalyticsSettings(lines=[LINE], counts_interval_s=0))
    events = run(analytics, [80, 90, 110, 120])  # left to right of a top-to-bottom line
    assert [(e.type, e.direction) for e in events] == [(EventType.LINE_CROSSED, "out")]
    events = run(analytics, [90, 80], start_ms=1000)
    assert [(e.type, e.direction) for e in events] == [(EventType.LINE_CROSSED, "in")]
    assert analytics.counts()["lines"]["door"] == {"in": 1, "out": 1}


def test_jitter_on_a_border_does_not_count() -> None:
    analytics = SceneAnalytics(AnalyticsSettings(lines=[LINE], zones=[ZONE], hysteresis_px=3, counts_interval_s=0))
    events = run(analytics, [90, 99, 101, 99, 102, 98, 101, 104, 118, 121, 119, 124, 121, 118, 122, 130])
    crossed = [e for e in events if e.type is EventType.LINE_CROSSED]
    entered = [e for e in events if e.type is EventType.ZONE_ENTERED]
    assert len(crossed) == 1 and len(entered) == 1, events
    assert not [e for e in events if e.type is EventType.ZONE_EXITED]


def test_zone_dwell_fires_once_and_exit_carries_the_dwell() -> None:
    analytics = SceneAnalytics(AnalyticsSettings(zones=[ZONE], counts_interval_s=0))
    events = run(analytics, [150] * 15 + [100])
    types = [e.type for e in events]
    assert types == [EventType.ZONE_ENTERED, EventType.DWELL_EXCEEDED, EventType.ZONE_EXITED]
    assert events[1].dwell_s == pytest.approx(1.0)
    assert events[2].dwell_s == pytest.approx(1.4)
    assert analytics.occupancy() == {"shelf": 0}


def test_a_track_that_ends_inside_leaves_the_zone() -> None:
    analytics = SceneAnalytics(AnalyticsSettings(zones=[ZONE], counts_interval_s=0))
    run(analytics, [150, 150])
    assert analytics.occupancy() == {"shelf": 1}
    events = analytics.update([], [obj(150)], 500, W, H)
    assert [e.type for e in events] == [EventType.ZONE_EXITED]
    assert analytics.occupancy() == {"shelf": 0}


def test_classes_filter_and_normalised_units() -> None:
    line = {"name": "mid", "points": [[0.5, 0], [0.5, 1]], "units": "normalized", "classes": ["Sneaker"]}
    analytics = SceneAnalytics(AnalyticsSettings(lines=[line], counts_interval_s=0))
    assert run(analytics, [80, 120]) == []  # a Bag does not count on this line
    sneaker = [analytics.update([TrackedObject(2, 7, "Sneaker", (x - 10, 40, x + 10, 60))], [], t, W, H) for t, x in
               enumerate([80, 120])]  # fmt: skip
    assert [e.line for es in sneaker for e in es] == ["mid"]


def test_counts_snapshot_every_interval_of_frame_time() -> None:
    analytics = SceneAnalytics(AnalyticsSettings(lines=[LINE], counts_interval_s=1.0))
    events = run(analytics, [80] * 25)
    counts = [e for e in events if e.type is EventType.COUNTS]
    assert len(counts) == 2
    assert counts[0].counts == {"zones": {}, "lines": {"door": {"in": 0, "out": 0}}}


def test_state_round_trip() -> None:
    settings = AnalyticsSettings(lines=[LINE], zones=[ZONE], counts_interval_s=0)
    analytics = SceneAnalytics(settings)
    run(analytics, [80, 90, 130, 140])
    restored = SceneAnalytics.from_state(settings, json.loads(json.dumps(analytics.to_state())))
    assert restored.counts() == analytics.counts()
    assert run(restored, [90], start_ms=400) == run(analytics, [90], start_ms=400)


def test_bad_geometry_is_refused() -> None:
    with pytest.raises(ValidationError, match=r"outside 0\.\.1"):
        AnalyticsSettings(lines=[{"name": "x", "points": [[0, 0], [2, 1]], "units": "normalized"}])
    with pytest.raises(ValidationError, match="two distinct points"):
        AnalyticsSettings(lines=[{"name": "x", "points": [[5, 5], [5, 5]]}])
    with pytest.raises(ValidationError, match="unique"):
        AnalyticsSettings(lines=[LINE], zones=[{**ZONE, "name": "door"}])
    with pytest.raises(ValidationError, match="set 'tracking'"):
        CameraPolicy(tasks=["detection"], analytics={"lines": [LINE]})
    with pytest.raises(ValidationError, match="detection task"):
        CameraPolicy(tasks=["classification"], tracking={})
