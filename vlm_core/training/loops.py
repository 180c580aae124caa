"""Per-task training pieces, framework-free: transforms, batching, loss, quick validation.

Box- and mask-aware augmentation uses ``torchvision.transforms.v2`` with ``tv_tensors``,
so flips and resizes move boxes and masks with the pixels. Inputs are normalised exactly
as the serving Predictor normalises them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision import tv_tensors
from torchvision.transforms import v2

from vlm_core.contracts.task import Task
from vlm_core.datasets import Sample
from vlm_core.models.predictor import IMAGENET_MEAN, IMAGENET_STD
from vlm_core.training.evaluate import segmentation_metrics

#: Default square input side per task when the architecture takes one.
DEFAULT_INPUT_SIZE = {Task.CLASSIFICATION: 224, Task.SEGMENTATION: 320}


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


def classification_transform(size: int, train: bool) -> v2.Transform:
    short = round(size * 256 / 224)  # the Predictor's eval transform: resize, centre crop
    steps: list[v2.Transform] = [v2.ToImage(), v2.Resize(short, antialias=True)]
    steps += [v2.RandomCrop(size), v2.RandomHorizontalFlip()] if train else [v2.CenterCrop(size)]
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    return v2.Compose(steps)


def segmentation_transform(size: int, train: bool, crop_size: int | None = None) -> v2.Transform:
    """Resize to the Predictor's square input; in training, ``crop_size`` takes random
    crops of that: the items keep the scale the model sees when serving, at a fraction of
    the compute per sample."""
    steps: list[v2.Transform] = [v2.ToImage(), v2.Resize((size, size), antialias=True)]
    if train:
        if crop_size and crop_size < size:
            steps.append(v2.RandomCrop(crop_size))
        steps += [v2.RandomHorizontalFlip(), v2.ColorJitter(0.3, 0.3, 0.3)]
    steps += [v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True)]
    steps += [v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    return v2.Compose(steps)


def detection_transform(train: bool) -> v2.Transform:
    """For (Image, {"boxes", "labels"}): torchvision detectors resize and normalise
    internally, so only augment and scale here."""
    steps: list[v2.Transform] = []
    if train:
        steps += [v2.RandomHorizontalFlip(), v2.RandomPhotometricDistort(p=0.5)]
    steps += [v2.ToDtype(torch.float32, scale=True), v2.SanitizeBoundingBoxes()]
    return v2.Compose(steps)


class TorchDataset(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """Samples -> model-ready tensors for one task."""

    def __init__(
        self, samples: Any, task: Task, input_size: int | None, train: bool, crop_size: int | None = None
    ) -> None:
        self.samples = samples
        self.task = task
        if task is Task.CLASSIFICATION:
            self.transform = classification_transform(input_size or 224, train)
        elif task is Task.SEGMENTATION:
            self.transform = segmentation_transform(input_size or 320, train, crop_size)
        else:
            self.transform = detection_transform(train)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Any:
        sample = self.samples[index]
        image = _rgb(sample)
        if self.task is Task.CLASSIFICATION:
            return self.transform(image), int(sample.label if sample.label is not None else -1)
        if self.task is Task.SEGMENTATION:
            if sample.mask is None:
                raise ValueError(f"sample {index} has no mask")
            img, mask = self.transform(image, tv_tensors.Mask(torch.from_numpy(sample.mask.astype(np.int64))))
            return img, mask.squeeze(0) if mask.ndim == 3 else mask
        height, width = image.shape[:2]
        boxes = tv_tensors.BoundingBoxes(
            torch.as_tensor(sample.boxes, dtype=torch.float32).reshape(-1, 4),
            format="XYXY",
            canvas_size=(height, width),
        )
        labels = torch.as_tensor(sample.box_labels, dtype=torch.int64) + 1  # 0 is background
        pixels = tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1))
        img, target = self.transform(pixels, {"boxes": boxes, "labels": labels})
        return img, {"boxes": target["boxes"].as_subclass(torch.Tensor), "labels": target["labels"]}


def collate(task: Task) -> Any:
    if task is Task.DETECTION:
        return lambda batch: tuple(zip(*batch, strict=True))
    return None  # default stacking


def training_loss(model: nn.Module, task: Task, batch: Any, settings: TrainSettings) -> torch.Tensor:
    inputs, targets = batch
    if task is Task.CLASSIFICATION:
        return F.cross_entropy(model(inputs), targets, label_smoothing=settings.label_smoothing)
    if task is Task.SEGMENTATION:
        out = model(inputs)
        loss = F.cross_entropy(out["out"], targets, ignore_index=255)
        if "aux" in out:
            loss = loss + 0.5 * F.cross_entropy(out["aux"], targets, ignore_index=255)
        return loss
    losses = model(list(inputs), list(targets))
    return sum(losses.values())  # type: ignore[return-value]


@torch.inference_mode()
def quick_validation(model: nn.Module, task: Task, batches: Iterable[Any]) -> dict[str, float]:
    """A per-epoch progress figure on the validation split (the final metrics come from
    :mod:`vlm_core.training.evaluate`, through the serving Predictor)."""
    model.eval()
    correct = total = classes = 0
    confusion = None
    for inputs, targets in batches:
        if task is Task.CLASSIFICATION:
            correct += int((model(inputs).argmax(1) == targets).sum())
            total += len(targets)
        elif task is Task.SEGMENTATION:
            logits = model(inputs)["out"]
            pred, classes = logits.argmax(1), int(logits.shape[1])
            valid = targets != 255
            counts = torch.bincount(targets[valid] * classes + pred[valid], minlength=classes**2)
            confusion = counts if confusion is None else confusion + counts
        else:
            outputs = model(list(inputs))
            for out, target in zip(outputs, targets, strict=True):
                keep = out["scores"] >= 0.5
                correct += _matched(out["boxes"][keep], out["labels"][keep], target["boxes"], target["labels"])
                total += len(target["labels"])
    model.train()
    if task is Task.SEGMENTATION:
        assert confusion is not None
        return {"val_miou": segmentation_metrics(confusion.reshape(classes, classes).cpu().numpy())["miou"]}
    if task is Task.CLASSIFICATION:
        return {"val_accuracy": correct / max(1, total)}
    return {"val_recall@0.5": correct / max(1, total)}


def _matched(boxes: torch.Tensor, labels: torch.Tensor, gt_boxes: torch.Tensor, gt_labels: torch.Tensor) -> int:
    from torchvision.ops import box_iou

    if len(boxes) == 0 or len(gt_boxes) == 0:
        return 0
    iou = box_iou(gt_boxes, boxes)
    iou[gt_labels[:, None] != labels[None, :]] = 0
    return int((iou.max(1).values >= 0.5).sum())
