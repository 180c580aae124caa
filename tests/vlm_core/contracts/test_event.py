from __future__ import annotations

import json

import jsonschema
import pytest

from vlm_core.contracts.dlq import FrameRef
from vlm_core.contracts.event import Event, EventError, EventType, event_json_schema
from vlm_core.contracts.result import ModelRef


def crossing() -> Event:
    return Event(
        EventType.LINE_CROSSED,
        "cam-1",
        seq=41,
        capture_ts_ms=1_000,
        frame=FrameRef("vlm.frames", 2, 977),
        models={"detection": ModelRef("scenes-detector", "1")},
        track_id=4,
        class_id=8,
        label="Bag",
        line="door",
        direction="in",
        index=1,
    )


def test_round_trip_through_the_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(event_json_schema())
    event = crossing()
    doc = json.loads(event.to_bytes())
    assert doc["schema"] == "vlm.event/v1" and doc["event_id"] == "vlm.frames/2/977/1"
    assert Event.from_bytes(event.to_bytes()) == event


@pytest.mark.parametrize(
    ("mutate", "where"),
    [
        (lambda d: d.update(direction="sideways"), "direction"),
        (lambda d: d.update(track_id=None), "track_id"),  # a crossing names its track
        (lambda d: d.update(type="teleported"), "type"),
        (lambda d: d.update(dwell_s=-1), "dwell_s"),
        (lambda d: d["frame"].pop("offset"), "frame"),
    ],
)
def test_violations_are_typed(mutate, where: str) -> None:  # type: ignore[no-untyped-def]
    doc = crossing().to_json()
    mutate(doc)
    with pytest.raises(EventError, match=where):
        Event.from_json(doc)


def test_counts_events_need_their_counts() -> None:
    doc = {**crossing().to_json(), "type": "counts", "track_id": None, "line": None, "direction": None}
    with pytest.raises(EventError, match="counts"):
        Event.from_json(doc)
    doc["counts"] = {"zones": {"z": {"occupancy": 1, "entered": 3, "exited": 2}}, "lines": {}}
    assert Event.from_json(doc).counts == doc["counts"]
    with pytest.raises(EventError):
        Event.from_bytes(b"not json")
