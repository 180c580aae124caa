"""Segmentation: per-class pixel fractions and COCO RLE masks per frame (``tasks.segmentation``)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision import tv_tensors
from torchvision.transforms import v2

from vlm_core.contracts.result import ClassMask, Segmentation, TaskOutput
from vlm_core.contracts.rle import RLE
from vlm_core.contracts.sample import MASK_IGNORE, Sample
from vlm_core.contracts.task import Task
from vlm_core.models.predictor import IMAGENET_MEAN, IMAGENET_STD, Predictor, PreparedBatch, image_sizes
from vlm_core.scoring import Scorer
from vlm_core.tasks.base import TaskDefaults, TaskProfile, TrainingInput, TrainingOptions


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


def confusion_counts(truth: np.ndarray | torch.Tensor, predicted: Any, classes: int) -> Any:
    """Pixel counts of (truth, prediction) pairs, flattened ``classes x classes``; the
    ignore index is skipped. Works on numpy arrays and torch tensors alike."""
    valid = truth != MASK_IGNORE
    flat = truth[valid] * classes + predicted[valid]
    if isinstance(flat, torch.Tensor):
        return torch.bincount(flat, minlength=classes**2)
    return np.bincount(flat, minlength=classes**2)


class SegmentationPredictor(Predictor):
    task = Task.SEGMENTATION
    default_input_size = 320

    def decode_short_side(self) -> int:
        # Both sides are resized to the input size: the shorter may come down to it.
        return self.input_size or self.default_input_size

    def _preprocess(self, images: Sequence[np.ndarray]) -> PreparedBatch:
        size = self.input_size or self.default_input_size
        resized = [cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA) for img in images]
        return PreparedBatch(self._to_batch(resized), image_sizes(images))

    def _infer(self, batch: PreparedBatch) -> list[TaskOutput]:
        assert isinstance(batch.inputs, torch.Tensor)
        logits = self.model(batch.inputs)["out"].float()
        ref = self.model_ref
        results: list[TaskOutput] = []
        # The logits are scaled to the frame with OpenCV, channels last: the same bilinear
        # half-pixel sampling as F.interpolate(align_corners=False), several times faster
        # on one thread at camera resolutions. Taking the argmax at the model's resolution
        # and scaling the label map would be faster still, but it cost a point of mIoU.
        channels_last = logits.permute(0, 2, 3, 1).contiguous().cpu().numpy()
        for (height, width), frame_logits in zip(batch.sizes, channels_last, strict=True):
            if frame_logits.shape[:2] != (height, width):
                frame_logits = cv2.resize(frame_logits, (width, height), interpolation=cv2.INTER_LINEAR)
            results.append(Segmentation(ref, self._class_masks(frame_logits.argmax(2).astype(np.uint8))))
        return results

    def _class_masks(self, label_map: np.ndarray) -> tuple[ClassMask, ...]:
        total = label_map.size
        counts = np.bincount(label_map.ravel())
        masks = []
        for class_id in np.flatnonzero(counts).tolist():
            if class_id == 0:  # background
                continue
            count = int(counts[class_id])
            label = self.class_names[class_id] if class_id < len(self.class_names) else str(class_id)
            masks.append(ClassMask(class_id, label, count / total, RLE.encode(label_map == class_id)))
        return tuple(masks)


class SegmentationScorer(Scorer):
    """mIoU and pixel accuracy."""

    primary_metric = "miou"

    def __init__(self, classes: int) -> None:
        self.classes = classes
        self.confusion = np.zeros((classes, classes), np.int64)

    def add(self, sample: Sample, output: TaskOutput) -> None:
        assert isinstance(output, Segmentation) and sample.mask is not None and self.confusion is not None
        truth = sample.mask.astype(np.int64)
        predicted = np.zeros_like(truth)
        for class_mask in output.classes:
            predicted[class_mask.mask.decode()] = class_mask.class_id
        self.confusion += confusion_counts(truth, predicted, self.classes).reshape(self.classes, self.classes)

    def metrics(self) -> dict[str, float]:
        assert self.confusion is not None
        return segmentation_metrics(self.confusion)


class SegmentationProfile(TaskProfile):
    task = Task.SEGMENTATION
    noun = "segmenter"
    deployment_name = "Segmenter"
    primary_metric = SegmentationScorer.primary_metric
    predictor = SegmentationPredictor
    output_type = Segmentation
    defaults = TaskDefaults(
        serving_arch="lraspp_mobilenet_v3_large",
        training_arch="lraspp_mobilenet_v2",
        epochs=8,
        batch_size=16,
        lr=2e-3,
        training_input_size=256,
        bench_batch_size=8,
    )
    ignore_index = MASK_IGNORE
    background_in_classes = True
    trains_on_crops = True
    distills = True

    def training_transform(self, shape: TrainingInput, train: bool) -> Callable[..., Any]:
        """Resize to the Predictor's square input; in training, ``shape.crop_size`` takes random
        crops of that: the items keep the scale the model sees when serving, at a fraction
        of the compute per sample."""
        size = shape.size or SegmentationPredictor.default_input_size
        steps: list[v2.Transform] = [v2.ToImage(), v2.Resize((size, size), antialias=True)]
        if train:
            if shape.crop_size and shape.crop_size < size:
                steps.append(v2.RandomCrop(shape.crop_size))
            steps += [v2.RandomHorizontalFlip(), v2.ColorJitter(0.3, 0.3, 0.3)]
        steps += [v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True)]
        steps += [v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
        return v2.Compose(steps)

    def training_item(self, sample: Sample, rgb: np.ndarray, transform: Callable[..., Any]) -> Any:
        if sample.mask is None:
            raise ValueError(f"sample {sample.source or '?'} has no mask")
        img, mask = transform(rgb, tv_tensors.Mask(torch.from_numpy(sample.mask.astype(np.int64))))
        return img, mask.squeeze(0) if mask.ndim == 3 else mask

    def loss(self, model: nn.Module, batch: Any, options: TrainingOptions) -> torch.Tensor:
        inputs, targets = batch
        out = model(inputs)
        loss = F.cross_entropy(out["out"], targets, ignore_index=MASK_IGNORE)
        if "aux" in out:
            loss = loss + 0.5 * F.cross_entropy(out["aux"], targets, ignore_index=MASK_IGNORE)
        if (distill := options.distillation) is None:
            return loss
        with torch.no_grad():
            # Fully convolutional: the teacher sees the student's pixels (crops) at their scale.
            teacher = distill.teacher(inputs)["out"]
        return distill.loss(loss, out["out"], teacher)

    def validation_counts(self, model: nn.Module, batches: Iterable[Any], classes: int) -> torch.Tensor:
        confusion = torch.zeros(classes * classes, dtype=torch.int64)
        for inputs, targets in batches:
            confusion += confusion_counts(targets, model(inputs)["out"].argmax(1), classes).cpu()
        return confusion

    def validation_metrics(self, counts: torch.Tensor) -> dict[str, float]:
        classes = math.isqrt(counts.numel())
        return {"val_miou": segmentation_metrics(counts.reshape(classes, classes).numpy())["miou"]}

    def scorer(self, class_count: int) -> Scorer:
        return SegmentationScorer(class_count)
