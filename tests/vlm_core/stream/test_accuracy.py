from __future__ import annotations

import pytest

from vlm_core.contracts.result import Classification, ClassScore, Detection, Detections, ModelRef, Result
from vlm_core.contracts.task import Task
from vlm_core.contracts.truth import FrameTruth, TruthObject
from vlm_core.stream.accuracy import LiveAccuracy, PhaseAccuracy, score, scored

V1, V2 = ModelRef("det", "1"), ModelRef("det", "2")
BOXES = ((10.0, 10.0, 50.0, 60.0), (100.0, 40.0, 160.0, 90.0))
TRUTH = FrameTruth("base", (TruthObject(BOXES[0], "Bag"), TruthObject(BOXES[1], "Coat")))


def detected(seq: int, detections: tuple[Detection, ...], model: ModelRef = V1, camera: str = "c") -> Result:
    return Result(camera, seq, 0, 1, 320, 240, {Task.DETECTION: Detections(model, detections)})


PERFECT = (Detection(BOXES[0], "Bag", 0, 0.9), Detection(BOXES[1], "Coat", 1, 0.8))


def test_perfect_boxes_score_one_and_none_score_zero() -> None:
    good = scored(detected(1, PERFECT), TRUTH, Task.DETECTION)
    empty = scored(detected(2, ()), TRUTH, Task.DETECTION)
    assert good is not None and empty is not None
    reading = score(Task.DETECTION, [good])
    assert reading is not None and reading.metric == "map50" and reading.value == pytest.approx(1.0)
    assert score(Task.DETECTION, [empty]).value == 0.0  # type: ignore[union-attr]
    # Half of the frames found everything, half nothing: recall caps the precision curve at 0.5.
    assert score(Task.DETECTION, [good, empty]).value == pytest.approx(0.5, abs=0.02)  # type: ignore[union-attr]


def test_a_wrong_class_or_a_misplaced_box_is_a_miss() -> None:
    wrong_class = (Detection(BOXES[0], "Coat", 1, 0.9), Detection(BOXES[1], "Bag", 0, 0.8))
    shifted = (Detection((60, 70, 100, 120), "Bag", 0, 0.9), Detection(BOXES[1], "Coat", 1, 0.8))
    for detections in (wrong_class, shifted):
        item = scored(detected(1, detections), TRUTH, Task.DETECTION)
        assert item is not None and score(Task.DETECTION, [item]).value < 0.6  # type: ignore[union-attr]


def test_classification_counts_frames_with_one_object() -> None:
    one = FrameTruth("base", (TruthObject(BOXES[0], "Bag"),))

    def classified(label: str) -> Result:
        top = (ClassScore(label, 0, 0.7),)
        return Result("c", 1, 0, 1, 320, 240, {Task.CLASSIFICATION: Classification(V1, top)})

    items = [scored(classified(label), one, Task.CLASSIFICATION) for label in ("Bag", "Bag", "Coat")]
    items.append(scored(classified("Bag"), TRUTH, Task.CLASSIFICATION))  # two objects: no single class
    reading = score(Task.CLASSIFICATION, [i for i in items if i is not None])
    assert reading is not None and reading.frames == 3 and reading.value == pytest.approx(2 / 3)
    assert scored(detected(1, PERFECT), one, Task.CLASSIFICATION) is None  # no classification output


def test_live_accuracy_is_a_window_per_camera_refreshed_on_a_clock() -> None:
    now = [0.0]
    live = LiveAccuracy(Task.DETECTION, window=4, refresh_s=1.0, clock=lambda: now[0])
    for seq in range(4):
        live.add(detected(seq, ()), TRUTH)
    assert live.reading("c").value == 0.0  # type: ignore[union-attr]
    for seq in range(4, 8):
        live.add(detected(seq, PERFECT), TRUTH)
    assert live.reading("c").value == 0.0  # type: ignore[union-attr]  # cached until the clock moves
    now[0] = 1.5
    reading = live.reading("c")
    assert reading is not None and reading.frames == 4 and reading.value == pytest.approx(1.0)
    assert live.reading("other") is None and set(live.readings()) == {"c"}


def test_live_accuracy_forgets_the_least_recent_camera_beyond_its_bound() -> None:
    live = LiveAccuracy(Task.DETECTION, max_cameras=2, refresh_s=0)
    for camera in ("a", "b", "c"):
        live.add(detected(1, PERFECT, camera=camera), TRUTH)
    assert set(live.readings()) == {"b", "c"}


def test_phases_split_by_domain_and_model() -> None:
    phases = PhaseAccuracy(Task.DETECTION)
    drifted = FrameTruth("clutter", TRUTH.objects)
    phases.add(detected(1, PERFECT), TRUTH)
    phases.add(detected(2, ()), drifted)
    phases.add(detected(3, PERFECT, V2), drifted)
    assert phases.reading("c", "base", "det@1").value == pytest.approx(1.0)  # type: ignore[union-attr]
    assert phases.reading("c", "clutter", "det@1").value == 0.0  # type: ignore[union-attr]
    assert phases.reading("c", "clutter", "det@2").value == pytest.approx(1.0)  # type: ignore[union-attr]
    assert phases.reading("c", "base", "det@2") is None
