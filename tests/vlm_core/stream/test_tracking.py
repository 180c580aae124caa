"""ByteTracker: ids, classes, lost tracks, bounds, state round trips (pure logic)."""

from __future__ import annotations

import json

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from vlm_core.datasets.scenes import SceneConfig, SceneMotion, SceneVideo
from vlm_core.pipeline import TrackingSettings
from vlm_core.stream.tracking import ByteTracker, Observation, TrackPhase

INTERVAL_MS = 100


def moving(x: float, y: float = 50.0, size: float = 40.0, cls: int = 0, score: float = 0.9) -> Observation:
    return Observation((x, y, x + size, y + size), cls, score)


def run(tracker: ByteTracker, frames: list[list[Observation]], start: int = 0) -> list[tuple[int | None, ...]]:
    return [tracker.update(obs, (start + t) * INTERVAL_MS).track_ids for t, obs in enumerate(frames)]


def test_a_track_is_confirmed_after_min_hits_and_keeps_its_id() -> None:
    tracker = ByteTracker(TrackingSettings(min_hits=3))
    ids = run(tracker, [[moving(10 + 3 * t)] for t in range(10)])
    assert ids[:2] == [(None,), (None,)]
    assert {i[0] for i in ids[2:]} == {1}


def test_two_objects_that_cross_keep_their_ids() -> None:
    tracker = ByteTracker(TrackingSettings(min_hits=2))
    frames = [[moving(10 + 4 * t, cls=0), moving(200 - 4 * t, y=60, cls=1)] for t in range(50)]
    ids = run(tracker, frames)
    assert {i[0] for i in ids[2:]} == {1} and {i[1] for i in ids[2:]} == {2}


def test_a_class_flicker_continues_the_track_and_the_track_keeps_its_class() -> None:
    tracker = ByteTracker(TrackingSettings(min_hits=2))
    run(tracker, [[moving(10, cls=0, score=0.9)], [moving(12, cls=0, score=0.8)], [moving(14, cls=3)]])
    (track,) = tracker.tracks
    assert track.track_id == 1 and track.class_id == 0, "a confirmed track's class is fixed"
    # A box of another class continues a track only where it overlaps well: here it starts its own.
    assert run(tracker, [[moving(40, cls=3)]], start=3)[0] == (None,)


def test_the_class_is_the_vote_of_the_boxes_before_confirmation() -> None:
    tracker = ByteTracker(TrackingSettings(min_hits=3))
    step = [tracker.update([moving(10 + t, cls=c, score=p)], t * INTERVAL_MS) for t, (c, p) in
            enumerate([(2, 0.7), (5, 0.9), (5, 0.8)])]  # fmt: skip
    assert step[-1].track_ids == (1,) and step[-1].matched[0].class_id == 5


def test_a_strict_class_penalty_keeps_classes_apart() -> None:
    tracker = ByteTracker(TrackingSettings(min_hits=1, class_penalty=1.0))
    first = run(tracker, [[moving(10, cls=0)]])[0][0]
    second = run(tracker, [[moving(10, cls=3)]], start=1)[0][0]
    assert (first, second) == (1, 2)


def test_a_short_loss_keeps_the_id_and_a_long_one_ends_the_track() -> None:
    tracker = ByteTracker(TrackingSettings(min_hits=1, max_lost_s=1.0))
    run(tracker, [[moving(10 + 2 * t)] for t in range(5)])
    run(tracker, [[] for _ in range(5)], start=5)  # 0.5 s unseen
    assert run(tracker, [[moving(30)]], start=10)[0] == (1,)
    steps = [tracker.update([], (11 + t) * INTERVAL_MS) for t in range(15)]
    ended = [t.track_id for s in steps for t in s.ended]
    assert ended == [1] and not tracker.tracks
    assert run(tracker, [[moving(30)]], start=30)[0] == (2,), "ids are never reused"


def test_low_score_boxes_extend_tracks_but_never_start_one() -> None:
    tracker = ByteTracker(TrackingSettings(min_hits=1, high_score=0.5, low_score=0.1))
    assert run(tracker, [[moving(10, score=0.3)]])[0] == (None,)
    assert not tracker.tracks
    run(tracker, [[moving(10 + 2 * t)] for t in range(3)], start=1)
    assert run(tracker, [[moving(16, score=0.3)]], start=4)[0] == (1,)


def test_lost_tracks_are_found_by_their_last_box() -> None:
    """An object that stops while unseen (its prediction runs on) is found where it was."""
    tracker = ByteTracker(TrackingSettings(min_hits=1, max_lost_s=3.0))
    run(tracker, [[moving(10 + 6 * t)] for t in range(8)])
    run(tracker, [[] for _ in range(12)], start=8)
    assert run(tracker, [[moving(52)]], start=20)[0] == (1,)


def test_tracks_are_bounded() -> None:
    tracker = ByteTracker(TrackingSettings(min_hits=1, max_tracks=5, max_lost_s=100))
    for t in range(20):
        tracker.update([moving(20.0 * i, y=10.0 * t, size=8) for i in range(8)], t * INTERVAL_MS)
        assert len(tracker.tracks) <= 5
    ids = [t.track_id for t in tracker.tracks]
    assert len(set(ids)) == len(ids)


def test_state_round_trip_continues_identically() -> None:
    frames = [[moving(10 + 3 * t), moving(250 - 2 * t, y=120, cls=2)] for t in range(40)]
    whole = ByteTracker(TrackingSettings())
    expected = run(whole, frames)
    first = ByteTracker(TrackingSettings())
    got = run(first, frames[:17])
    state = json.loads(json.dumps(first.to_state()))
    resumed = ByteTracker.from_state(TrackingSettings(), state)
    got += run(resumed, frames[17:], start=17)
    assert got == expected


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), drop=st.floats(0, 0.5))
def test_ids_are_unique_per_frame_and_never_come_back_after_ending(seed: int, drop: float) -> None:
    rng = np.random.default_rng(seed)
    video = SceneVideo(SceneConfig(min_items=3, max_items=5), seed=seed % 50, motion=SceneMotion(bounce=False))
    tracker = ByteTracker(TrackingSettings(min_hits=2, max_lost_s=0.5))
    ended: set[int] = set()
    classes: dict[int, int] = {}
    for t in range(60):
        video.next()
        obs = [
            Observation(tuple(np.array(item.box) + rng.normal(0, 2, 4)), item.label, float(rng.uniform(0.2, 1)))
            for item in video.truth
            if rng.random() >= drop
        ]
        step = tracker.update(obs, t * INTERVAL_MS)
        ids = [i for i in step.track_ids if i is not None]
        assert len(ids) == len(set(ids))
        assert not set(ids) & ended
        for track in step.matched.values():
            assert classes.setdefault(track.track_id or 0, track.class_id) == track.class_id, "a track kept its class"
        ended |= {t.track_id for t in step.ended if t.track_id is not None}
        assert all(t.phase is not TrackPhase.TENTATIVE or t.track_id is None for t in tracker.tracks)


def test_after_a_gap_longer_than_max_lost_the_object_gets_a_new_id() -> None:
    tracker = ByteTracker(TrackingSettings(min_hits=1, max_lost_s=1.0))
    run(tracker, [[moving(10 + 2 * t)] for t in range(5)])
    step = tracker.update([moving(20)], 5 * INTERVAL_MS + 2_000)  # no frames for 2 s
    assert step.track_ids == (2,) and [t.track_id for t in step.ended] == [1]
