"""Multi-object tracking of one camera: ByteTrack's association on ``lapx``.

ByteTrack (Zhang et al., 2022) matches high-score boxes to every track first, then
low-score boxes to the tracks still unmatched, so an object whose score drops while it is
partly occluded keeps its track. Motion is a constant-velocity Kalman filter over
``(cx, cy, aspect, height)`` with ByteTrack's noise weights; a gap between frames is
predicted as that many steps of the camera's usual frame interval.

What this adds to the paper, for a stream that must survive its process:

- Lost tracks are also matched by their last observed box, not only by their prediction
  (OC-SORT's observation-centric recovery): an object that stood still behind another
  or stepped out of the frame and back is found where it was last seen.
- Classes: a detector's class flickers between similar classes from frame to frame, so a
  box of another class may still continue a track, at a cost (``class_penalty`` added to
  1 - IoU). A track's class is the score-weighted vote of the boxes it matched until it is
  confirmed, and fixed from then on: a track never changes class, and an id never spans
  two classes.
- A track gets its id when it is confirmed (``min_hits`` matches in a row); ids come from
  a per-camera counter that only grows, so an id is never reused.
- The whole state (tracks, filters, counter) is plain data: :meth:`ByteTracker.to_state`
  and :meth:`ByteTracker.from_state` carry it through the state topic.
- Memory is bounded: lost tracks expire after ``max_lost_s``, and at most ``max_tracks``
  are kept.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import lap
import numpy as np

from vlm_core.pipeline import TrackingSettings

Box = tuple[float, float, float, float]

_STD_POSITION = 1.0 / 20
_STD_VELOCITY = 1.0 / 160
#: Tentative tracks match remaining boxes at this IoU (ByteTrack's "unconfirmed" stage).
_TENTATIVE_MATCH_IOU = 0.3
#: A gap of more than this many frame intervals is predicted as this many.
_MAX_PREDICT_STEPS = 30


class TrackPhase(str, enum.Enum):
    TENTATIVE = "tentative"  # matched fewer than min_hits frames in a row; no id yet
    TRACKED = "tracked"  # confirmed and seen in the last frame
    LOST = "lost"  # confirmed, not seen lately; kept for re-identification


@dataclass(frozen=True)
class Observation:
    """One detection handed to the tracker."""

    box: Box
    class_id: int
    score: float


@dataclass
class Track:
    uid: int  # internal, also for tentative tracks
    class_id: int
    mean: np.ndarray  # (8,): cx, cy, aspect, height and their velocities per frame interval
    covariance: np.ndarray  # (8, 8)
    phase: TrackPhase
    hits: int
    first_ts_ms: int
    last_ts_ms: int
    track_id: int | None = None
    #: The last box it was matched with.
    last_box: Box = (0.0, 0.0, 0.0, 0.0)
    #: Until confirmation: the summed scores of its boxes per class (the vote for its class).
    votes: dict[int, float] = field(default_factory=dict)

    @property
    def confirmed(self) -> bool:
        return self.track_id is not None

    @property
    def box(self) -> Box:
        cx, cy, aspect, height = (float(v) for v in self.mean[:4])
        width = aspect * height
        return (cx - width / 2, cy - height / 2, cx + width / 2, cy + height / 2)

    def to_state(self) -> dict[str, Any]:
        return {
            "uid": self.uid,
            "class_id": self.class_id,
            "mean": [round(float(v), 4) for v in self.mean],
            "covariance": [round(float(v), 6) for v in self.covariance.ravel()],
            "phase": self.phase.value,
            "hits": self.hits,
            "first_ts_ms": self.first_ts_ms,
            "last_ts_ms": self.last_ts_ms,
            "track_id": self.track_id,
            "last_box": [round(v, 2) for v in self.last_box],
            "votes": {str(c): round(v, 4) for c, v in self.votes.items()},
        }

    @classmethod
    def from_state(cls, doc: dict[str, Any]) -> Track:
        mean = np.asarray(doc["mean"], np.float64)
        covariance = np.asarray(doc["covariance"], np.float64)
        if mean.shape != (8,) or covariance.shape != (64,) or not np.isfinite(covariance).all():
            raise ValueError("a track's filter state has the wrong shape")
        return cls(
            uid=int(doc["uid"]),
            class_id=int(doc["class_id"]),
            mean=mean,
            covariance=covariance.reshape(8, 8),
            phase=TrackPhase(doc["phase"]),
            hits=int(doc["hits"]),
            first_ts_ms=int(doc["first_ts_ms"]),
            last_ts_ms=int(doc["last_ts_ms"]),
            track_id=None if doc["track_id"] is None else int(doc["track_id"]),
            last_box=tuple(float(v) for v in doc["last_box"]),  # type: ignore[arg-type]
            votes={int(c): float(v) for c, v in doc["votes"].items()},
        )


@dataclass(frozen=True)
class TrackingStep:
    """What one frame did to the camera's tracks."""

    #: Per observation, in input order: its confirmed track's id, or None.
    track_ids: tuple[int | None, ...]
    #: The confirmed tracks matched in this frame, by observation index.
    matched: dict[int, Track]
    #: Confirmed tracks that expired (lost too long) or were evicted in this frame.
    ended: tuple[Track, ...]


@dataclass
class ByteTracker:
    settings: TrackingSettings
    next_id: int = 1
    next_uid: int = 1
    tracks: list[Track] = field(default_factory=list)
    last_ts_ms: int | None = None
    #: The camera's usual frame interval (an exponential average), for gaps.
    frame_interval_ms: float | None = None

    @property
    def active(self) -> int:
        """Confirmed tracks, seen now or lost and still kept."""
        return sum(1 for t in self.tracks if t.confirmed)

    def update(self, observations: Sequence[Observation], ts_ms: int) -> TrackingStep:
        s = self.settings
        steps = self._steps(ts_ms)
        # A track lost for longer than max_lost_s ends before it could match (after a gap in
        # the frames too): an id never comes back after its track's time is up.
        expired = self._expire(ts_ms)
        for track in self.tracks:
            track.mean, track.covariance = _predict(track.mean, track.covariance, steps)
        usable = _distinct([i for i, o in enumerate(observations) if o.score >= s.low_score], observations, s)
        high = [i for i in usable if observations[i].score >= s.high_score]
        low = [i for i in usable if observations[i].score < s.high_score]
        assigned: dict[int, Track] = {}

        # 1. high-score boxes against every confirmed track (seen or lost)
        penalty = s.class_penalty
        pool = [t for t in self.tracks if t.confirmed]
        pairs, rest_tracks, rest_high = _associate(pool, observations, high, s.match_iou, penalty)
        assigned.update(pairs)
        # 2. low-score boxes against the confirmed tracks seen in the last frame
        recent = [t for t in rest_tracks if t.phase is TrackPhase.TRACKED]
        pairs, _, _ = _associate(recent, observations, low, s.low_match_iou, penalty)
        assigned.update(pairs)
        # 3. lost tracks by their last observed box against the high-score boxes left
        lost = [t for t in rest_tracks if t.phase is TrackPhase.LOST]
        pairs, _, rest_high = _associate(lost, observations, rest_high, s.match_iou, penalty, last_seen=True)
        for index, track in pairs.items():  # the prediction went astray: start it over here
            track.mean, track.covariance = _initiate(_xyah(observations[index].box))
        assigned.update(pairs)
        # 4. tentative tracks against the high-score boxes left
        tentative = [t for t in self.tracks if not t.confirmed]
        pairs, _, unmatched_high = _associate(tentative, observations, rest_high, _TENTATIVE_MATCH_IOU, penalty)
        assigned.update(pairs)

        for index, track in assigned.items():
            self._observe(track, observations[index], ts_ms)
        matched_uids = {t.uid for t in assigned.values()}
        for index in unmatched_high:
            if observations[index].score >= s.new_track_score:
                track = self._start(observations[index], ts_ms)
                assigned[index] = track
        ended = expired + self._age(matched_uids | {t.uid for t in assigned.values()}, ts_ms)
        self.last_ts_ms = ts_ms if self.last_ts_ms is None else max(self.last_ts_ms, ts_ms)
        matched = {i: t for i, t in assigned.items() if t.confirmed}
        ids = tuple(matched[i].track_id if i in matched else None for i in range(len(observations)))
        return TrackingStep(ids, matched, ended)

    def release(self) -> tuple[Track, ...]:
        """Drop every track (the camera went silent); the id counter stays."""
        ended = tuple(t for t in self.tracks if t.confirmed)
        self.tracks = []
        self.last_ts_ms = None
        return ended

    def _steps(self, ts_ms: int) -> int:
        if self.last_ts_ms is None:
            return 1
        gap = ts_ms - self.last_ts_ms
        if gap <= 0:
            return 1
        if self.frame_interval_ms is None:
            self.frame_interval_ms = float(gap)
        steps = max(1, min(_MAX_PREDICT_STEPS, round(gap / self.frame_interval_ms)))
        if steps == 1:  # only regular intervals move the average: a gap is not the rate
            self.frame_interval_ms = 0.9 * self.frame_interval_ms + 0.1 * gap
        return steps

    def _observe(self, track: Track, obs: Observation, ts_ms: int) -> None:
        track.mean, track.covariance = _update(track.mean, track.covariance, _xyah(obs.box))
        track.last_box = obs.box
        track.hits = track.hits + 1 if track.phase is not TrackPhase.LOST else 1
        track.last_ts_ms = ts_ms
        if track.track_id is None:
            track.votes[obs.class_id] = track.votes.get(obs.class_id, 0.0) + obs.score
            track.class_id = max(track.votes, key=lambda c: track.votes[c])
            if track.hits >= self.settings.min_hits:
                self._confirm(track)
        track.phase = TrackPhase.TRACKED if track.confirmed else TrackPhase.TENTATIVE

    def _start(self, obs: Observation, ts_ms: int) -> Track:
        mean, covariance = _initiate(_xyah(obs.box))
        track = Track(
            self.next_uid,
            obs.class_id,
            mean,
            covariance,
            TrackPhase.TENTATIVE,
            1,
            ts_ms,
            ts_ms,
            last_box=obs.box,
            votes={obs.class_id: obs.score},
        )
        self.next_uid += 1
        if self.settings.min_hits <= 1:
            self._confirm(track)
            track.phase = TrackPhase.TRACKED
        self.tracks.append(track)
        return track

    def _confirm(self, track: Track) -> None:
        """The track gets its id, and its class is fixed."""
        track.track_id = self.next_id
        self.next_id += 1
        track.votes = {}

    def _expire(self, ts_ms: int) -> tuple[Track, ...]:
        max_lost_ms = self.settings.max_lost_s * 1000
        expired = tuple(t for t in self.tracks if t.confirmed and ts_ms - t.last_ts_ms > max_lost_ms)
        if expired:
            self.tracks = [t for t in self.tracks if not (t.confirmed and ts_ms - t.last_ts_ms > max_lost_ms)]
        return expired

    def _age(self, seen: set[int], ts_ms: int) -> tuple[Track, ...]:
        """Unseen tracks: tentative ones die, confirmed ones are lost and then expire."""
        kept: list[Track] = []
        ended: list[Track] = []
        max_lost_ms = self.settings.max_lost_s * 1000
        for track in self.tracks:
            if track.uid not in seen:
                if not track.confirmed:
                    continue
                track.phase = TrackPhase.LOST
                if ts_ms - track.last_ts_ms > max_lost_ms:
                    ended.append(track)
                    continue
            kept.append(track)
        overflow = len(kept) - self.settings.max_tracks
        if overflow > 0:  # evict the longest-lost first, then the oldest tentative
            order = sorted(kept, key=lambda t: (t.phase is TrackPhase.TRACKED, t.confirmed, t.last_ts_ms))
            evicted = {t.uid for t in order[:overflow]}
            ended.extend(t for t in kept if t.uid in evicted and t.confirmed)
            kept = [t for t in kept if t.uid not in evicted]
        self.tracks = kept
        return tuple(ended)

    def to_state(self) -> dict[str, Any]:
        return {
            "next_id": self.next_id,
            "next_uid": self.next_uid,
            "last_ts_ms": self.last_ts_ms,
            "frame_interval_ms": self.frame_interval_ms,
            "tracks": [t.to_state() for t in self.tracks],
        }

    @classmethod
    def from_state(cls, settings: TrackingSettings, doc: dict[str, Any]) -> ByteTracker:
        tracks = [Track.from_state(t) for t in doc["tracks"]]
        next_id = int(doc["next_id"])
        if any(t.track_id is not None and t.track_id >= next_id for t in tracks):
            raise ValueError("a track id is not below the id counter")
        return cls(
            settings,
            next_id=next_id,
            next_uid=int(doc["next_uid"]),
            tracks=tracks[: settings.max_tracks],
            last_ts_ms=doc["last_ts_ms"],
            frame_interval_ms=doc["frame_interval_ms"],
        )


def _distinct(indices: list[int], observations: Sequence[Observation], s: TrackingSettings) -> list[int]:
    """Class-agnostic non-maximum suppression: a detector's per-class outputs can put two
    boxes of different classes on one object; the weaker one is left untracked."""
    if len(indices) < 2 or s.duplicate_iou >= 1:
        return indices
    order = sorted(indices, key=lambda i: -observations[i].score)
    boxes = np.array([observations[i].box for i in order], np.float64)
    iou = box_iou(boxes, boxes)
    kept: list[int] = []  # ranks in ``order``
    for rank in range(len(order)):
        if not kept or iou[rank, kept].max() < s.duplicate_iou:
            kept.append(rank)
    return sorted(order[rank] for rank in kept)


def _associate(
    tracks: Sequence[Track],
    observations: Sequence[Observation],
    indices: Sequence[int],
    min_iou: float,
    class_penalty: float,
    *,
    last_seen: bool = False,
) -> tuple[dict[int, Track], list[Track], list[int]]:
    """Optimal one-to-one matching on 1 - IoU (Jonker-Volgenant, from lapx), plus
    ``class_penalty`` where the box's class is not the track's, with each track's predicted
    box (or, ``last_seen``, its last observed one).
    Returns (observation index -> track, unmatched tracks, unmatched observation indices)."""
    if not tracks or not indices:
        return {}, list(tracks), list(indices)
    boxes = np.array([observations[i].box for i in indices], np.float64)
    predicted = np.array([t.last_box if last_seen else t.box for t in tracks], np.float64)
    cost = 1.0 - box_iou(predicted, boxes)
    classes = np.array([observations[i].class_id for i in indices])
    cost[np.array([t.class_id for t in tracks])[:, None] != classes[None, :]] += class_penalty
    limit = 1.0 - min_iou
    _, track_to_obs, _ = lap.lapjv(cost, extend_cost=True, cost_limit=limit)
    pairs: dict[int, Track] = {}
    unmatched_tracks: list[Track] = []
    for row, col in enumerate(track_to_obs):
        if col >= 0 and cost[row, col] <= limit:
            pairs[indices[col]] = tracks[row]
        else:
            unmatched_tracks.append(tracks[row])
    return pairs, unmatched_tracks, [i for i in indices if i not in pairs]


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` (N, 4) with every box in ``b`` (M, 4), xyxy."""
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)


# -- the Kalman filter (ByteTrack's, over cx, cy, aspect, height) -------------------------


def _xyah(box: Box) -> np.ndarray:
    x1, y1, x2, y2 = box
    width, height = max(x2 - x1, 1e-3), max(y2 - y1, 1e-3)
    return np.array([(x1 + x2) / 2, (y1 + y2) / 2, width / height, height], np.float64)


def _initiate(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = np.concatenate([z, np.zeros(4)])
    h = z[3]
    std = [
        2 * _STD_POSITION * h,
        2 * _STD_POSITION * h,
        1e-2,
        2 * _STD_POSITION * h,
        10 * _STD_VELOCITY * h,
        10 * _STD_VELOCITY * h,
        1e-5,
        10 * _STD_VELOCITY * h,
    ]
    return mean, np.diag(np.square(std))


def _predict(mean: np.ndarray, covariance: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
    motion = np.eye(8)
    motion[:4, 4:] = np.eye(4) * steps
    h = mean[3]
    std = [_STD_POSITION * h] * 2 + [1e-2, _STD_POSITION * h] + [_STD_VELOCITY * h] * 2 + [1e-5, _STD_VELOCITY * h]
    noise = np.diag(np.square(std)) * steps
    mean = motion @ mean
    covariance = motion @ covariance @ motion.T + noise
    mean[3] = max(mean[3], 1.0)  # a shrinking prediction never inverts its box
    return mean, covariance


def _update(mean: np.ndarray, covariance: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    h = mean[3]
    innovation_cov = covariance[:4, :4] + np.diag(
        np.square([_STD_POSITION * h, _STD_POSITION * h, 1e-1, _STD_POSITION * h])
    )
    gain = np.linalg.solve(innovation_cov, covariance[:4, :]).T  # (8, 4)
    mean = mean + gain @ (z - mean[:4])
    covariance = covariance - gain @ innovation_cov @ gain.T
    return mean, covariance
