"""Detection: boxes with labels and scores per frame (``tasks.detection``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn
from torchvision import tv_tensors
from torchvision.transforms import v2

from vlm_core.contracts.result import Detection, Detections, TaskOutput
from vlm_core.contracts.sample import Sample
from vlm_core.contracts.task import Task
from vlm_core.models.predictor import Predictor, PreparedBatch, image_sizes
from vlm_core.scoring import DetectionScorer, Scorer
from vlm_core.tasks.base import TaskDefaults, TaskProfile, TrainingInput, TrainingOptions

#: The score a box needs to count in the per-epoch recall figure.
QUICK_VALIDATION_SCORE = 0.5


class DetectionPredictor(Predictor):
    task = Task.DETECTION
    # Channels-last and half precision do not pay off for torchvision's detectors.
    cuda_fast_path = False

    def _preprocess(self, images: Sequence[np.ndarray]) -> PreparedBatch:
        # torchvision detectors normalise and resize internally and map boxes back to
        # each input's own size, so frames of different sizes share one batch.
        tensors = tuple(
            torch.from_numpy(cv2.cvtColor(img, cv2.COLOR_BGR2RGB)).to(self.device).permute(2, 0, 1).float().div_(255)
            for img in images
        )
        return PreparedBatch(tensors, image_sizes(images))

    def _infer(self, batch: PreparedBatch) -> list[TaskOutput]:
        outputs = self.model(list(batch.inputs))
        ref = self.model_ref
        results: list[TaskOutput] = []
        for (height, width), out in zip(batch.sizes, outputs, strict=True):
            keep = out["scores"] >= self.spec.score_threshold
            boxes = out["boxes"][keep][: self.spec.max_detections].cpu()
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
            labels = out["labels"][keep][: self.spec.max_detections].tolist()
            scores = out["scores"][keep][: self.spec.max_detections].tolist()
            results.append(
                Detections(
                    ref,
                    tuple(
                        Detection(
                            (box[0], box[1], box[2], box[3]),
                            self.class_names[label - 1] if 0 < label <= len(self.class_names) else str(label),
                            int(label) - 1,
                            float(score),
                        )
                        for box, label, score in zip(boxes.tolist(), labels, scores, strict=True)
                    ),
                )
            )
        return results


class DetectionProfile(TaskProfile):
    task = Task.DETECTION
    noun = "detector"
    deployment_name = "Detector"
    primary_metric = DetectionScorer.primary_metric
    predictor = DetectionPredictor
    output_type = Detections
    defaults = TaskDefaults(
        serving_arch="ssdlite320_mobilenet_v3_large",
        training_arch="fasterrcnn_mobilenet_v2",
        epochs=8,
        batch_size=8,
        lr=1e-3,
        training_input_size=None,
        bench_batch_size=8,
    )
    loader_moves_batches = False  # images and targets are lists: the training loop moves them

    def evaluation_overrides(self) -> dict[str, Any]:
        return {"score_threshold": 0.05}  # mAP needs the low-score boxes too

    def training_transform(self, shape: TrainingInput, train: bool) -> Callable[..., Any]:
        """For (Image, {"boxes", "labels"}): torchvision detectors resize and normalise
        internally, so only augment and scale here."""
        steps: list[v2.Transform] = []
        if train:
            steps += [v2.RandomHorizontalFlip(), v2.RandomPhotometricDistort(p=0.5)]
        steps += [v2.ToDtype(torch.float32, scale=True), v2.SanitizeBoundingBoxes()]
        return v2.Compose(steps)

    def training_item(self, sample: Sample, rgb: np.ndarray, transform: Callable[..., Any]) -> Any:
        height, width = rgb.shape[:2]
        boxes = tv_tensors.BoundingBoxes(
            torch.as_tensor(sample.boxes, dtype=torch.float32).reshape(-1, 4),
            format="XYXY",
            canvas_size=(height, width),
        )
        labels = torch.as_tensor(sample.box_labels, dtype=torch.int64) + 1  # 0 is background
        pixels = tv_tensors.Image(torch.from_numpy(rgb).permute(2, 0, 1))
        img, target = transform(pixels, {"boxes": boxes, "labels": labels})
        return img, {"boxes": target["boxes"].as_subclass(torch.Tensor), "labels": target["labels"]}

    def collate(self) -> Callable[[list[Any]], Any] | None:
        return lambda batch: tuple(zip(*batch, strict=True))

    def loss(self, model: nn.Module, batch: Any, options: TrainingOptions) -> torch.Tensor:
        inputs, targets = batch
        losses = model(list(inputs), list(targets))
        return sum(losses.values())

    def validation_counts(self, model: nn.Module, batches: Iterable[Any], classes: int) -> torch.Tensor:
        correct = total = 0
        for inputs, targets in batches:
            for out, target in zip(model(list(inputs)), targets, strict=True):
                keep = out["scores"] >= QUICK_VALIDATION_SCORE
                correct += _matched(out["boxes"][keep], out["labels"][keep], target["boxes"], target["labels"])
                total += len(target["labels"])
        return torch.tensor([correct, total], dtype=torch.int64)

    def validation_metrics(self, counts: torch.Tensor) -> dict[str, float]:
        correct, total = counts.tolist()
        return {"val_recall@0.5": correct / max(1, total)}

    def scorer(self, class_count: int) -> Scorer:
        return DetectionScorer(class_count)


def _matched(boxes: torch.Tensor, labels: torch.Tensor, gt_boxes: torch.Tensor, gt_labels: torch.Tensor) -> int:
    from torchvision.ops import box_iou

    if len(boxes) == 0 or len(gt_boxes) == 0:
        return 0
    iou = box_iou(gt_boxes, boxes)
    iou[gt_labels[:, None] != labels[None, :]] = 0
    return int((iou.max(1).values >= 0.5).sum())
