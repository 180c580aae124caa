"""Live accuracy: results scored against the ground truth their frames carry (``vlm-truth``,
from synthetic cameras), with the task's own scorer (pycocotools mAP for detection).

:class:`LiveAccuracy` keeps, per camera, the last ``window`` scored frames: what a view shows
now. :class:`PhaseAccuracy` keeps every frame by (camera, domain, model): what a report
compares before and after a drift or a model swap. Both are bounded.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from vlm_core.contracts.result import Classification, ClassScore, Detection, Detections, Result
from vlm_core.contracts.sample import Sample
from vlm_core.contracts.task import Task
from vlm_core.contracts.truth import FrameTruth
from vlm_core.scoring import ClassificationScorer, DetectionScorer

#: Scored tasks: detection against every true box, classification against frames with one object.
SCORED_TASKS = (Task.DETECTION, Task.CLASSIFICATION)
_SCORERS = {Task.DETECTION: DetectionScorer, Task.CLASSIFICATION: ClassificationScorer}


@dataclass(frozen=True)
class Scored:
    """One frame's truth with the task's output for it."""

    truth: FrameTruth
    output: Detections | Classification
    width: int
    height: int

    @property
    def model(self) -> str:
        return f"{self.output.model.name}@{self.output.model.version}"


@dataclass(frozen=True)
class AccuracyReading:
    #: The task's primary metric: ``map50`` for detection, ``accuracy`` for classification.
    metric: str
    value: float
    frames: int
    #: The domains and models of the frames scored, most frequent first.
    domains: tuple[str, ...]
    models: tuple[str, ...]

    def to_json(self) -> dict[str, object]:
        return {
            "metric": self.metric,
            "value": round(self.value, 4),
            "frames": self.frames,
            "domains": list(self.domains),
            "models": list(self.models),
        }


def scored(result: Result, truth: FrameTruth, task: Task) -> Scored | None:
    """The frame's output for ``task`` with its truth, or None when the result has no such output."""
    output = result.detection if task is Task.DETECTION else result.classification
    if output is None:
        return None
    return Scored(truth, output, result.width, result.height)


def score(task: Task, frames: Iterable[Scored]) -> AccuracyReading | None:
    """The task's metric over ``frames`` (None when none can be scored)."""
    items = list(frames)
    if task is Task.CLASSIFICATION:
        items = [s for s in items if len(s.truth.objects) == 1 and _output_labels(s.output)]
    if not items:
        return None
    names = _class_index(items)
    scorer = _SCORERS[task](len(names))
    for item in items:
        sample, output = _as_sample(item, names)
        scorer.add(sample, output)
    value = scorer.metrics()[scorer.primary_metric]
    return AccuracyReading(
        scorer.primary_metric,
        float(value),
        len(items),
        _by_frequency(s.truth.domain for s in items),
        _by_frequency(s.model for s in items),
    )


class LiveAccuracy:
    """Per camera, the metric over its last ``window`` frames with truth, recomputed at most
    every ``refresh_s`` (pycocotools over a window costs milliseconds, not microseconds)."""

    def __init__(
        self,
        task: Task = Task.DETECTION,
        *,
        window: int = 100,
        max_cameras: int = 256,
        refresh_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.task, self.window, self.max_cameras, self.refresh_s, self.clock = (
            task,
            window,
            max_cameras,
            refresh_s,
            clock,
        )
        self._frames: OrderedDict[str, deque[Scored]] = OrderedDict()
        self._readings: dict[str, tuple[float, AccuracyReading | None]] = {}

    def add(self, result: Result, truth: FrameTruth) -> None:
        item = scored(result, truth, self.task)
        if item is None:
            return
        frames = self._frames.get(result.camera_id)
        if frames is None:
            if len(self._frames) >= self.max_cameras:
                forgotten, _ = self._frames.popitem(last=False)
                self._readings.pop(forgotten, None)
            frames = self._frames[result.camera_id] = deque(maxlen=self.window)
        else:
            self._frames.move_to_end(result.camera_id)
        frames.append(item)

    def reading(self, camera_id: str) -> AccuracyReading | None:
        now = self.clock()
        cached = self._readings.get(camera_id)
        if cached is not None and now - cached[0] < self.refresh_s:
            return cached[1]
        frames = self._frames.get(camera_id)
        value = score(self.task, list(frames)) if frames else None
        self._readings[camera_id] = (now, value)
        return value

    def readings(self) -> dict[str, AccuracyReading]:
        out = {camera: self.reading(camera) for camera in list(self._frames)}
        return {camera: reading for camera, reading in out.items() if reading is not None}


class PhaseAccuracy:
    """Every scored frame by (camera, domain, model), up to ``max_frames`` each: a drift or a
    model swap starts a new phase, and each phase is scored on its own."""

    def __init__(self, task: Task = Task.DETECTION, *, max_frames: int = 5000) -> None:
        self.task, self.max_frames = task, max_frames
        self.phases: dict[tuple[str, str, str], deque[Scored]] = {}

    def add(self, result: Result, truth: FrameTruth) -> None:
        item = scored(result, truth, self.task)
        if item is None:
            return
        key = (result.camera_id, truth.domain, item.model)
        self.phases.setdefault(key, deque(maxlen=self.max_frames)).append(item)

    def reading(self, camera_id: str, domain: str, model: str, *, skip: int = 0) -> AccuracyReading | None:
        """The phase's metric, leaving out its first ``skip`` frames (a phase's start can
        hold frames queued before a swap took effect)."""
        frames = list(self.phases.get((camera_id, domain, model), ()))[skip:]
        return score(self.task, frames)


def _class_index(items: list[Scored]) -> dict[str, int]:
    names: dict[str, int] = {}
    for item in items:
        for obj in item.truth.objects:
            names.setdefault(obj.label, len(names))
        for label in _output_labels(item.output):
            names.setdefault(label, len(names))
    return names


def _output_labels(output: Detections | Classification) -> list[str]:
    if isinstance(output, Detections):
        return [d.label for d in output.detections]
    return [c.label for c in output.top_k]


def _as_sample(item: Scored, names: dict[str, int]) -> tuple[Sample, Detections | Classification]:
    """The truth as the scorer's Sample, the output with class ids from the same index."""
    objects = item.truth.objects
    sample = Sample(
        image=np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (item.height, item.width, 3)),  # scorers read its shape
        boxes=np.array([o.box for o in objects], np.float32).reshape(-1, 4),
        box_labels=np.array([names[o.label] for o in objects], np.int64),
        label=names[objects[0].label] if len(objects) == 1 else None,
    )
    output = item.output
    if isinstance(output, Detections):
        return sample, Detections(
            output.model,
            tuple(Detection(d.box, d.label, names[d.label], d.score) for d in output.detections),
        )
    return sample, Classification(
        output.model, tuple(ClassScore(c.label, names[c.label], c.score) for c in output.top_k)
    )


def _by_frequency(values: Iterable[str]) -> tuple[str, ...]:
    counts: dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return tuple(sorted(counts, key=lambda v: -counts[v]))


__all__ = ["AccuracyReading", "LiveAccuracy", "PhaseAccuracy", "Scored", "score", "scored"]
