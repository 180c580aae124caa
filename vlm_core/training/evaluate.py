"""Evaluation through the serving Predictor, so the figures are those of what serves.

- classification: accuracy, top-5 accuracy, confusion matrix (and a PNG of it);
- detection: COCO mAP@[.5:.95] and mAP@.5 with pycocotools;
- segmentation: mIoU and pixel accuracy.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vlm_core.contracts.result import Classification, Detections, Segmentation
from vlm_core.contracts.task import Task
from vlm_core.models import Predictor

PRIMARY_METRIC = {Task.CLASSIFICATION: "accuracy", Task.DETECTION: "map50", Task.SEGMENTATION: "miou"}


def evaluation_overrides(task: Task) -> dict[str, Any]:
    """ModelSpec settings for evaluating a model: mAP needs the low-score detections too."""
    return {"score_threshold": 0.05} if task is Task.DETECTION else {}


def segmentation_metrics(confusion: np.ndarray) -> dict[str, float]:
    """mIoU over the classes present (in truth or prediction) and pixel accuracy, from a
    truth x prediction pixel-count matrix."""
    inter = np.diag(confusion).astype(float)
    union = confusion.sum(0) + confusion.sum(1) - inter
    present = union > 0
    return {
        "miou": float((inter[present] / union[present]).mean()) if present.any() else 0.0,
        "pixel_accuracy": float(inter.sum() / max(1, confusion.sum())),
    }


@dataclass
class Evaluation:
    task: Task
    metrics: dict[str, float]
    samples: int
    confusion: np.ndarray | None = field(default=None, repr=False)

    @property
    def primary(self) -> float:
        return self.metrics[PRIMARY_METRIC[self.task]]


def evaluate(
    predictor: Predictor,
    samples: Any,
    *,
    batch_size: int = 32,
    limit: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Evaluation:
    count = min(len(samples), limit) if limit else len(samples)
    task = predictor.spec.task
    if task is Task.CLASSIFICATION:
        scorer: _Scorer = _ClassificationScorer(len(predictor.class_names))
    elif task is Task.DETECTION:
        scorer = _DetectionScorer(len(predictor.class_names))
    else:
        scorer = _SegmentationScorer(len(predictor.class_names))
    for start in range(0, count, batch_size):
        batch = [samples[i] for i in range(start, min(count, start + batch_size))]
        outputs = predictor.predict([s.image for s in batch])
        for sample, output in zip(batch, outputs, strict=True):
            scorer.add(sample, output)
        if progress is not None:
            progress(min(count, start + batch_size), count)
    return Evaluation(task, scorer.metrics(), count, getattr(scorer, "confusion", None))


class _Scorer:
    def add(self, sample: Any, output: Any) -> None:
        raise NotImplementedError

    def metrics(self) -> dict[str, float]:
        raise NotImplementedError


class _ClassificationScorer(_Scorer):
    def __init__(self, classes: int) -> None:
        self.confusion = np.zeros((classes, classes), np.int64)
        self.top5 = 0
        self.total = 0

    def add(self, sample: Any, output: Any) -> None:
        assert isinstance(output, Classification)
        ids = [c.class_id for c in output.top_k]
        self.confusion[sample.label, ids[0]] += 1
        self.top5 += int(sample.label in ids[:5])
        self.total += 1

    def metrics(self) -> dict[str, float]:
        total = max(1, self.total)
        return {"accuracy": float(np.trace(self.confusion)) / total, "top5": self.top5 / total}


class _DetectionScorer(_Scorer):
    def __init__(self, classes: int) -> None:
        self.classes = classes
        self.images: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []
        self.detections: list[dict[str, Any]] = []

    def add(self, sample: Any, output: Any) -> None:
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


class _SegmentationScorer(_Scorer):
    def __init__(self, classes: int) -> None:
        self.classes = classes
        self.confusion = np.zeros((classes, classes), np.int64)

    def add(self, sample: Any, output: Any) -> None:
        assert isinstance(output, Segmentation)
        truth = sample.mask.astype(np.int64)
        predicted = np.zeros_like(truth)
        for class_mask in output.classes:
            predicted[class_mask.mask.decode()] = class_mask.class_id
        valid = truth != 255
        self.confusion += np.bincount(
            truth[valid] * self.classes + predicted[valid], minlength=self.classes**2
        ).reshape(self.classes, self.classes)

    def metrics(self) -> dict[str, float]:
        return segmentation_metrics(self.confusion)


def save_confusion_png(confusion: np.ndarray, class_names: tuple[str, ...], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = confusion.sum(1, keepdims=True).clip(min=1)
    fig, ax = plt.subplots(figsize=(1 + 0.55 * len(class_names), 1 + 0.5 * len(class_names)))
    ax.imshow(confusion / rows, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(class_names)), class_names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(class_names)), class_names, fontsize=8)
    for (i, j), value in np.ndenumerate(confusion):
        if value:
            ax.text(j, i, str(value), ha="center", va="center", fontsize=6)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def save_curves_png(history: list[dict[str, float]], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(epochs, [h["train_loss"] for h in history], "o-", label="train loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    metric = next((k for k in history[0] if k.startswith("val_")), None) if history else None
    if metric:
        other = ax.twinx()
        other.plot(epochs, [h[metric] for h in history], "s-", color="tab:orange", label=metric)
        other.set_ylabel(metric)
        other.legend(loc="center right")
    ax.legend(loc="upper right")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
