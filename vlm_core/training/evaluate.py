"""Evaluation through the serving Predictor, so the figures are those of what serves.
Each task's profile scores it (:meth:`vlm_core.tasks.TaskProfile.scorer`):

- classification: accuracy, top-5 accuracy, confusion matrix (and a PNG of it);
- detection: COCO mAP@[.5:.95] and mAP@.5 with pycocotools;
- segmentation: mIoU and pixel accuracy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vlm_core.contracts.task import Task
from vlm_core.models import Predictor
from vlm_core.tasks import get_profile


def evaluation_overrides(task: Task) -> dict[str, Any]:
    """ModelSpec settings for evaluating a model of ``task`` (its profile's)."""
    return get_profile(task).evaluation_overrides()


@dataclass
class Evaluation:
    task: Task
    metrics: dict[str, float]
    samples: int
    confusion: np.ndarray | None = field(default=None, repr=False)

    @property
    def primary(self) -> float:
        return self.metrics[get_profile(self.task).primary_metric]


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
    scorer = get_profile(task).scorer(len(predictor.class_names))
    for start in range(0, count, batch_size):
        batch = [samples[i] for i in range(start, min(count, start + batch_size))]
        outputs = predictor.predict([s.image for s in batch])
        for sample, output in zip(batch, outputs, strict=True):
            scorer.add(sample, output)
        if progress is not None:
            progress(min(count, start + batch_size), count)
    return Evaluation(task, scorer.metrics(), count, scorer.confusion)


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
