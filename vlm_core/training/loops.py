"""Training pieces, framework-free, for any task: the task's profile supplies its
transforms, targets, batching, loss and quick validation
(:class:`vlm_core.tasks.TaskProfile`).

Box- and mask-aware augmentation uses ``torchvision.transforms.v2`` with ``tv_tensors``,
so flips and resizes move boxes and masks with the pixels. Inputs are normalised exactly
as the serving Predictor normalises them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from vlm_core.contracts.sample import Sample
from vlm_core.contracts.task import Task
from vlm_core.tasks import Distillation, TrainingInput, TrainingOptions, get_profile


@dataclass(frozen=True)
class TrainSettings:
    task: Task
    epochs: int
    batch_size: int
    lr: float
    input_size: int | None
    weight_decay: float = 1e-4
    label_smoothing: float = 0.1


def _rgb(sample: Sample) -> np.ndarray:
    # Datasets hold frames as a camera sends them (BGR); models see RGB, like the Predictor.
    return cv2.cvtColor(sample.image, cv2.COLOR_BGR2RGB)


class TorchDataset(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """Samples -> model-ready tensors for one task."""

    def __init__(self, samples: Any, task: Task, shape: TrainingInput, train: bool) -> None:
        self.samples = samples
        self.profile = get_profile(task)
        self.transform = self.profile.training_transform(shape, train)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Any:
        sample = self.samples[index]
        return self.profile.training_item(sample, _rgb(sample), self.transform)


def collate(task: Task) -> Callable[[list[Any]], Any] | None:
    return get_profile(task).collate()


def training_loss(
    model: nn.Module, task: Task, batch: Any, settings: TrainSettings, distillation: Distillation | None = None
) -> torch.Tensor:
    options = TrainingOptions(label_smoothing=settings.label_smoothing, distillation=distillation)
    return get_profile(task).loss(model, batch, options)


@torch.inference_mode()
def validation_counts(model: nn.Module, task: Task, batches: Iterable[Any], classes: int) -> torch.Tensor:
    """The task's summable validation counts over ``batches`` (a shard of the validation
    split, when workers share it), in eval mode."""
    model.eval()
    try:
        return get_profile(task).validation_counts(model, batches, classes)
    finally:
        model.train()
