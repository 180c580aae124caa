"""Scorers: (sample, a model's output) pairs in, evaluation metrics out.

Each task's profile names its scorer. Those here need numpy and pycocotools alone, so that
what scores results without running a model (the live view's accuracy) loads no torch.
"""

from __future__ import annotations

import abc
import contextlib
import io
from typing import Any, ClassVar

import numpy as np

from vlm_core.contracts.result import Classification, Detections, TaskOutput
from vlm_core.contracts.sample import Sample


class Scorer(abc.ABC):
    """Accumulates one evaluation: (sample, the predictor's output) pairs in, metrics out."""

    #: The metric a promotion gate and a live view compare.
    primary_metric: ClassVar[str]
    #: A truth x prediction matrix, where the task has one (kept in the evaluation).
    confusion: np.ndarray | None = None

    @abc.abstractmethod
    def add(self, sample: Sample, output: TaskOutput) -> None: ...

    @abc.abstractmethod
    def metrics(self) -> dict[str, float]: ...


class ClassificationScorer(Scorer):
    """Accuracy, top-5 accuracy and the confusion matrix."""

    primary_metric = "accuracy"

    def __init__(self, classes: int) -> None:
        self.confusion = np.zeros((classes, classes), np.int64)
        self.top5 = 0
        self.total = 0

    def add(self, sample: Sample, output: TaskOutput) -> None:
        assert isinstance(output, Classification) and self.confusion is not None
        ids = [c.class_id for c in output.top_k]
        self.confusion[sample.label, ids[0]] += 1
        self.top5 += int(sample.label in ids[:5])
        self.total += 1

    def metrics(self) -> dict[str, float]:
        assert self.confusion is not None
        total = max(1, self.total)
        return {"accuracy": float(np.trace(self.confusion)) / total, "top5": self.top5 / total}


class DetectionScorer(Scorer):
    """COCO mAP@[.5:.95] and mAP@.5 with pycocotools."""

    primary_metric = "map50"

    def __init__(self, classes: int) -> None:
        self.classes = classes
        self.images: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []
        self.detections: list[dict[str, Any]] = []

    def add(self, sample: Sample, output: TaskOutput) -> None:
        assert isinstance(output, Detections)
        image_id = len(self.images) + 1
        height, width = sample.image.shape[:2]
        self.images.append({"id": image_id, "height": height, "width": width})
        for box, label in zip(sample.boxes.tolist(), sample.box_labels.tolist(), strict=True):
            x1, y1, x2, y2 = box
            self.annotations.append(
                {
                    "id": len(self.annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(label) + 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": 0,
                }
            )
        for det in output.detections:
            x1, y1, x2, y2 = det.box
            self.detections.append(
                {
                    "image_id": image_id,
                    "category_id": det.class_id + 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": det.score,
                }
            )

    def metrics(self) -> dict[str, float]:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        if not self.detections:
            return {"map": 0.0, "map50": 0.0}
        truth = COCO()
        truth.dataset = {
            "images": self.images,
            "annotations": self.annotations,
            "categories": [{"id": i + 1, "name": str(i)} for i in range(self.classes)],
        }
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its tables
            truth.createIndex()
            found = truth.loadRes(self.detections)
            coco_eval = COCOeval(truth, found, "bbox")
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
        return {"map": float(coco_eval.stats[0]), "map50": float(coco_eval.stats[1])}
