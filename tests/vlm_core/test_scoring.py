"""The scorers that need no torch: classification and detection metrics."""

import numpy as np
import pytest

from vlm_core.contracts.result import Classification, ClassScore, Detection, Detections, ModelRef
from vlm_core.contracts.sample import Sample
from vlm_core.contracts.task import Task
from vlm_core.scoring import ClassificationScorer, DetectionScorer
from vlm_core.tasks import get_profile

REF = ModelRef("m", "1")
IMAGE = np.zeros((100, 100, 3), np.uint8)


def test_classification_accuracy_top5_and_confusion() -> None:
    scorer = ClassificationScorer(6)
    for truth, ranked in ((0, [0, 1, 2, 3, 4]), (1, [2, 1, 0, 3, 4]), (5, [0, 1, 2, 3, 4])):
        scorer.add(Sample(IMAGE, label=truth), Classification(REF, tuple(ClassScore(str(i), i, 0.1) for i in ranked)))
    metrics = scorer.metrics()
    assert metrics["accuracy"] == pytest.approx(1 / 3) and metrics["top5"] == pytest.approx(2 / 3)
    assert scorer.confusion[1, 2] == 1 and scorer.confusion[5, 0] == 1 and scorer.confusion.sum() == 3


def test_detection_map_perfect_partial_and_empty() -> None:
    truth = Sample(IMAGE, boxes=np.array([[10, 10, 50, 50], [60, 60, 90, 90]], np.float32), box_labels=np.array([0, 1]))
    perfect = DetectionScorer(2)
    perfect.add(
        truth, Detections(REF, (Detection((10, 10, 50, 50), "0", 0, 0.9), Detection((60, 60, 90, 90), "1", 1, 0.8)))
    )
    assert perfect.metrics()["map50"] == pytest.approx(1.0) and perfect.metrics()["map"] == pytest.approx(1.0)
    wrong_class = DetectionScorer(2)
    wrong_class.add(
        truth, Detections(REF, (Detection((10, 10, 50, 50), "0", 0, 0.9), Detection((60, 60, 90, 90), "0", 0, 0.8)))
    )
    assert 0.4 < wrong_class.metrics()["map50"] < 0.6
    empty = DetectionScorer(2)
    empty.add(truth, Detections(REF, ()))
    assert empty.metrics() == {"map": 0.0, "map50": 0.0}


def test_each_profile_compares_its_scorers_primary_metric() -> None:
    for task in (Task.CLASSIFICATION, Task.DETECTION, Task.SEGMENTATION):  # a test may register more
        profile = get_profile(task)
        assert profile.scorer(2).primary_metric == profile.primary_metric
