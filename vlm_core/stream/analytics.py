"""Zones and lines over one camera's confirmed tracks: what turns tracks into events.

A track's anchor point (its box's bottom centre by default) is tested against every zone
(a polygon) and line (a segment). Both use hysteresis: the anchor must be
``hysteresis_px`` past a border before its side changes, so a box jittering on a border
never counts. Only confirmed tracks count, and a track's side of a line is first set when
it is confirmed, so a track born on a line does not count as crossing it.

The state (which track is inside which zone since when, which side of each line, the
running counts) is plain data for the state topic, like the tracker's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from vlm_core.contracts.event import EventType
from vlm_core.pipeline import AnalyticsSettings, Anchor, LineSettings, Units, ZoneSettings

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class TrackedObject:
    track_id: int
    class_id: int
    label: str
    box: Box


@dataclass(frozen=True)
class Occurrence:
    """Something that happened in a frame; the stage turns it into an :class:`Event`."""

    type: EventType
    track_id: int | None = None
    class_id: int | None = None
    label: str | None = None
    zone: str | None = None
    line: str | None = None
    direction: str | None = None
    dwell_s: float | None = None
    counts: dict[str, Any] | None = None


@dataclass
class _Stay:
    entered_ts_ms: int
    last_ts_ms: int
    dwell_reported: bool = False


@dataclass
class _ZoneCounts:
    entered: int = 0
    exited: int = 0


@dataclass
class _LineCounts:
    crossed_in: int = 0
    crossed_out: int = 0


@dataclass
class SceneAnalytics:
    settings: AnalyticsSettings
    #: zone -> track id -> its current stay
    stays: dict[str, dict[int, _Stay]] = field(default_factory=dict)
    #: line -> track id -> side (+1 right of the line's direction, -1 left)
    sides: dict[str, dict[int, int]] = field(default_factory=dict)
    zone_counts: dict[str, _ZoneCounts] = field(default_factory=dict)
    line_counts: dict[str, _LineCounts] = field(default_factory=dict)
    last_counts_ts_ms: int | None = None
    _geometry: dict[tuple[int, int], _Geometry] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for zone in self.settings.zones:
            self.stays.setdefault(zone.name, {})
            self.zone_counts.setdefault(zone.name, _ZoneCounts())
        for line in self.settings.lines:
            self.sides.setdefault(line.name, {})
            self.line_counts.setdefault(line.name, _LineCounts())

    def update(
        self, objects: Sequence[TrackedObject], ended: Sequence[TrackedObject], ts_ms: int, width: int, height: int
    ) -> list[Occurrence]:
        geometry = self._geometry_for(width, height)
        out: list[Occurrence] = []
        hysteresis = self.settings.hysteresis_px
        for obj in objects:
            for zone, polygon in zip(self.settings.zones, geometry.polygons, strict=True):
                if not _counts(zone.classes, obj.label):
                    continue
                distance = cv2.pointPolygonTest(polygon, _anchor(obj.box, zone.anchor), True)
                out.extend(self._zone_step(zone, obj, distance, hysteresis, ts_ms))
            for line, segment in zip(self.settings.lines, geometry.segments, strict=True):
                if _counts(line.classes, obj.label):
                    out.extend(self._line_step(line, segment, obj, hysteresis))
        for obj in ended:
            out.extend(self._leave_all(obj))
        if self._counts_due(ts_ms):
            out.append(Occurrence(EventType.COUNTS, counts=self.counts()))
        return out

    def occupancy(self) -> dict[str, int]:
        return {zone: len(stays) for zone, stays in self.stays.items()}

    def counts(self) -> dict[str, Any]:
        return {
            "zones": {
                name: {"occupancy": len(self.stays[name]), "entered": c.entered, "exited": c.exited}
                for name, c in self.zone_counts.items()
            },
            "lines": {name: {"in": c.crossed_in, "out": c.crossed_out} for name, c in self.line_counts.items()},
        }

    def release(self) -> None:
        """The camera went silent: its tracks are gone, its running totals stay."""
        for stays in self.stays.values():
            stays.clear()
        for sides in self.sides.values():
            sides.clear()

    def _zone_step(
        self, zone: ZoneSettings, obj: TrackedObject, distance: float, hysteresis: float, ts_ms: int
    ) -> list[Occurrence]:
        stays = self.stays[zone.name]
        stay = stays.get(obj.track_id)
        base = {"track_id": obj.track_id, "class_id": obj.class_id, "label": obj.label, "zone": zone.name}
        if stay is None:
            if distance >= hysteresis:
                stays[obj.track_id] = _Stay(ts_ms, ts_ms)
                self.zone_counts[zone.name].entered += 1
                return [Occurrence(EventType.ZONE_ENTERED, **base)]  # type: ignore[arg-type]
            return []
        if distance <= -hysteresis:
            del stays[obj.track_id]
            self.zone_counts[zone.name].exited += 1
            dwell = (stay.last_ts_ms - stay.entered_ts_ms) / 1000
            return [Occurrence(EventType.ZONE_EXITED, dwell_s=round(dwell, 3), **base)]  # type: ignore[arg-type]
        stay.last_ts_ms = max(stay.last_ts_ms, ts_ms)
        threshold = zone.dwell_threshold_s
        dwell = (stay.last_ts_ms - stay.entered_ts_ms) / 1000
        if threshold is not None and not stay.dwell_reported and dwell >= threshold:
            stay.dwell_reported = True
            return [Occurrence(EventType.DWELL_EXCEEDED, dwell_s=round(dwell, 3), **base)]  # type: ignore[arg-type]
        return []

    def _line_step(
        self, line: LineSettings, segment: np.ndarray, obj: TrackedObject, hysteresis: float
    ) -> list[Occurrence]:
        side = line_side(segment, _anchor(obj.box, line.anchor), hysteresis)
        if side == 0:
            return []
        sides = self.sides[line.name]
        previous = sides.get(obj.track_id)
        sides[obj.track_id] = side
        if previous is None or previous == side:
            return []
        counts = self.line_counts[line.name]
        if side > 0:
            counts.crossed_in += 1
        else:
            counts.crossed_out += 1
        direction = "in" if side > 0 else "out"
        return [
            Occurrence(
                EventType.LINE_CROSSED,
                track_id=obj.track_id,
                class_id=obj.class_id,
                label=obj.label,
                line=line.name,
                direction=direction,
            )
        ]

    def _leave_all(self, obj: TrackedObject) -> list[Occurrence]:
        """A track that ended leaves every zone it was in (at the time it was last seen)."""
        out = []
        for zone, stays in self.stays.items():
            stay = stays.pop(obj.track_id, None)
            if stay is not None:
                self.zone_counts[zone].exited += 1
                dwell = round((stay.last_ts_ms - stay.entered_ts_ms) / 1000, 3)
                out.append(
                    Occurrence(
                        EventType.ZONE_EXITED,
                        track_id=obj.track_id,
                        class_id=obj.class_id,
                        label=obj.label,
                        zone=zone,
                        dwell_s=dwell,
                    )
                )
        for sides in self.sides.values():
            sides.pop(obj.track_id, None)
        return out

    def _counts_due(self, ts_ms: int) -> bool:
        interval_ms = self.settings.counts_interval_s * 1000
        if interval_ms <= 0 or not self.settings.enabled:
            return False
        if self.last_counts_ts_ms is None:
            self.last_counts_ts_ms = ts_ms
            return False
        if ts_ms - self.last_counts_ts_ms >= interval_ms:
            self.last_counts_ts_ms = ts_ms
            return True
        return False

    def _geometry_for(self, width: int, height: int) -> _Geometry:
        key = (width, height)
        if key not in self._geometry:
            if len(self._geometry) > 8:  # a camera changes resolution rarely
                self._geometry.clear()
            self._geometry[key] = _Geometry.of(self.settings, width, height)
        return self._geometry[key]

    def to_state(self) -> dict[str, Any]:
        return {
            "stays": {
                zone: {str(tid): [s.entered_ts_ms, s.last_ts_ms, s.dwell_reported] for tid, s in stays.items()}
                for zone, stays in self.stays.items()
            },
            "sides": {line: {str(tid): side for tid, side in sides.items()} for line, sides in self.sides.items()},
            "zone_counts": {z: [c.entered, c.exited] for z, c in self.zone_counts.items()},
            "line_counts": {ln: [c.crossed_in, c.crossed_out] for ln, c in self.line_counts.items()},
            "last_counts_ts_ms": self.last_counts_ts_ms,
        }

    @classmethod
    def from_state(cls, settings: AnalyticsSettings, doc: dict[str, Any]) -> SceneAnalytics:
        """Restore; zones and lines that are no longer configured are dropped, new ones start at zero."""
        zones = {z.name for z in settings.zones}
        lines = {ln.name for ln in settings.lines}
        return cls(
            settings,
            stays={
                zone: {int(tid): _Stay(int(a), int(b), bool(r)) for tid, (a, b, r) in stays.items()}
                for zone, stays in doc["stays"].items()
                if zone in zones
            },
            sides={
                line: {int(tid): int(side) for tid, side in sides.items()}
                for line, sides in doc["sides"].items()
                if line in lines
            },
            zone_counts={z: _ZoneCounts(int(a), int(b)) for z, (a, b) in doc["zone_counts"].items() if z in zones},
            line_counts={ln: _LineCounts(int(a), int(b)) for ln, (a, b) in doc["line_counts"].items() if ln in lines},
            last_counts_ts_ms=doc["last_counts_ts_ms"],
        )


@dataclass(frozen=True)
class _Geometry:
    """Zones and lines in a frame size's pixels."""

    polygons: tuple[np.ndarray, ...]
    segments: tuple[np.ndarray, ...]

    @classmethod
    def of(cls, settings: AnalyticsSettings, width: int, height: int) -> _Geometry:
        def pixels(points: Sequence[tuple[float, float]], units: Units) -> np.ndarray:
            scale = np.array([width, height], np.float32) if units is Units.NORMALIZED else np.ones(2, np.float32)
            return np.asarray(points, np.float32) * scale

        return cls(
            tuple(pixels(z.polygon, z.units).reshape(-1, 1, 2) for z in settings.zones),
            tuple(pixels(ln.points, ln.units) for ln in settings.lines),
        )


def _counts(classes: tuple[str, ...], label: str) -> bool:
    return not classes or label in classes


def _anchor(box: Box, anchor: Anchor) -> tuple[float, float]:
    x1, y1, x2, y2 = box
    cx = (x1 + x2) / 2
    if anchor is Anchor.CENTER:
        return (cx, (y1 + y2) / 2)
    if anchor is Anchor.TOP_CENTER:
        return (cx, y1)
    return (cx, y2)


def line_side(segment: np.ndarray, point: tuple[float, float], hysteresis: float) -> int:
    """+1 or -1 for the side of the segment's line the point is on, 0 when it is within
    ``hysteresis`` of the line or beyond the segment's ends."""
    (x1, y1), (x2, y2) = segment
    dx, dy = x2 - x1, y2 - y1
    length = float(np.hypot(dx, dy))
    px, py = point[0] - x1, point[1] - y1
    along = (px * dx + py * dy) / length
    if along < 0 or along > length:
        return 0
    distance = (dx * py - dy * px) / length  # > 0: right of the direction, as seen on the image
    if abs(distance) < max(hysteresis, 1e-9):
        return 0
    return 1 if distance > 0 else -1
