"""Predictor: one shape for all tasks. Batch of decoded BGR frames in, contract results out.

A Predictor owns its pre- and post-processing: resize and normalise on the way in,
boxes and masks rescaled to each frame's own pixels on the way out. ``predict`` is
``infer(preprocess(frames))``; the two halves are public so a server can prepare the
next batch while the model runs the current one.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from vlm_core.contracts.result import (
    Classification,
    ClassMask,
    ClassScore,
    Detection,
    Detections,
    ModelRef,
    Segmentation,
    TaskOutput,
)
from vlm_core.contracts.rle import RLE
from vlm_core.contracts.task import Task
from vlm_core.models.spec import ModelSpec
from vlm_core.models.zoo import build_model, default_device

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class PreparedBatch:
    """Model-ready input of one batch, from :meth:`Predictor.preprocess`.

    ``inputs`` is one NCHW tensor, or one CHW tensor per frame for detectors (they resize
    internally); ``sizes`` holds each original frame's (height, width).
    """

    inputs: torch.Tensor | tuple[torch.Tensor, ...]
    sizes: tuple[tuple[int, int], ...]

    def __len__(self) -> int:
        return len(self.sizes)

    @staticmethod
    def concat(batches: Sequence[PreparedBatch]) -> PreparedBatch:
        if len(batches) == 1:
            return batches[0]
        sizes = tuple(size for b in batches for size in b.sizes)
        if all(isinstance(b.inputs, torch.Tensor) for b in batches):
            return PreparedBatch(torch.cat([b.inputs for b in batches]), sizes)  # type: ignore[misc]
        return PreparedBatch(tuple(t for b in batches for t in b.inputs), sizes)


class Predictor:
    """Base class; build instances with :func:`build_predictor`."""

    task: Task
    default_input_size: int | None = None

    def __init__(self, spec: ModelSpec, device: torch.device | str | None = None) -> None:
        self.spec = spec
        self.device = torch.device(device) if device is not None else default_device()
        model, class_names = build_model(spec)
        self.class_names = class_names
        self.input_size = spec.input_size or self.default_input_size
        self.half = self.device.type == "cuda" and self.task is not Task.DETECTION
        model.eval().to(self.device)
        if self.device.type == "cuda" and self.task is not Task.DETECTION:
            model = model.to(memory_format=torch.channels_last)
        if self.half:
            model = model.half()
        self.model = model
        self._mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)

    @property
    def model_ref(self) -> ModelRef:
        return ModelRef(self.spec.name, self.spec.version)

    def predict(self, images: Sequence[np.ndarray]) -> list[TaskOutput]:
        """Run the model on a batch of HxWx3 BGR uint8 frames of any sizes."""
        if not images:
            return []
        with torch.inference_mode():
            return self._infer(self._preprocess(images))

    def preprocess(self, images: Sequence[np.ndarray]) -> PreparedBatch:
        """The CPU half: resize, colour order, normalise. Thread-safe."""
        with torch.inference_mode():
            return self._preprocess(images)

    def infer(self, batch: PreparedBatch) -> list[TaskOutput]:
        """The model half: forward pass and post-processing to contract results."""
        if not len(batch):
            return []
        with torch.inference_mode():
            return self._infer(batch)

    def warmup(self, batch_size: int = 1, size: tuple[int, int] = (240, 320)) -> float:
        """Run one dummy batch so the first real batch is not slow; returns its seconds."""
        start = time.perf_counter()
        self.predict([np.zeros((*size, 3), dtype=np.uint8)] * batch_size)
        return time.perf_counter() - start

    def _preprocess(self, images: Sequence[np.ndarray]) -> PreparedBatch:
        raise NotImplementedError

    def _infer(self, batch: PreparedBatch) -> list[TaskOutput]:
        raise NotImplementedError

    def _to_batch(self, arrays: Sequence[np.ndarray]) -> torch.Tensor:
        """Stack equally-sized RGB uint8 arrays into a normalised NCHW tensor."""
        batch = torch.from_numpy(np.stack(arrays)).to(self.device, non_blocking=True)
        batch = batch.permute(0, 3, 1, 2).float().div_(255.0).sub_(self._mean).div_(self._std)
        if self.device.type == "cuda":
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch.half() if self.half else batch


class ClassificationPredictor(Predictor):
    task = Task.CLASSIFICATION
    default_input_size = 224

    def _preprocess(self, images: Sequence[np.ndarray]) -> PreparedBatch:
        size = self.input_size or 224
        return PreparedBatch(self._to_batch([_resize_center_crop(img, size) for img in images]), _sizes(images))

    def _infer(self, batch: PreparedBatch) -> list[TaskOutput]:
        assert isinstance(batch.inputs, torch.Tensor)
        probs = torch.softmax(self.model(batch.inputs).float(), dim=1)
        k = min(self.spec.top_k, probs.shape[1])
        scores, ids = probs.topk(k, dim=1)
        ref = self.model_ref
        return [
            Classification(
                ref,
                tuple(
                    ClassScore(self.class_names[i], i, float(s))
                    for s, i in zip(row_scores.tolist(), row_ids.tolist(), strict=True)
                ),
            )
            for row_scores, row_ids in zip(scores.cpu(), ids.cpu(), strict=True)
        ]


class DetectionPredictor(Predictor):
    task = Task.DETECTION

    def _preprocess(self, images: Sequence[np.ndarray]) -> PreparedBatch:
        # torchvision detectors normalise and resize internally and map boxes back to
        # each input's own size, so frames of different sizes share one batch.
        tensors = tuple(
            torch.from_numpy(cv2.cvtColor(img, cv2.COLOR_BGR2RGB)).to(self.device).permute(2, 0, 1).float().div_(255)
            for img in images
        )
        return PreparedBatch(tensors, _sizes(images))

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


class SegmentationPredictor(Predictor):
    task = Task.SEGMENTATION
    default_input_size = 320

    def _preprocess(self, images: Sequence[np.ndarray]) -> PreparedBatch:
        size = self.input_size or 320
        rgb = [
            cv2.cvtColor(cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
            for img in images
        ]
        return PreparedBatch(self._to_batch(rgb), _sizes(images))

    def _infer(self, batch: PreparedBatch) -> list[TaskOutput]:
        assert isinstance(batch.inputs, torch.Tensor)
        logits = self.model(batch.inputs)["out"].float()
        ref = self.model_ref
        results: list[TaskOutput] = []
        for (height, width), frame_logits in zip(batch.sizes, logits, strict=True):
            up = F.interpolate(frame_logits[None], size=(height, width), mode="bilinear", align_corners=False)
            label_map = up[0].argmax(0).to(torch.uint8).cpu().numpy()
            results.append(Segmentation(ref, self._class_masks(label_map)))
        return results

    def _class_masks(self, label_map: np.ndarray) -> tuple[ClassMask, ...]:
        total = label_map.size
        ids, counts = np.unique(label_map, return_counts=True)
        masks = []
        for class_id, count in zip(ids.tolist(), counts.tolist(), strict=True):
            if class_id == 0:  # background
                continue
            label = self.class_names[class_id] if class_id < len(self.class_names) else str(class_id)
            masks.append(ClassMask(class_id, label, count / total, RLE.encode(label_map == class_id)))
        return tuple(masks)


_PREDICTORS: dict[Task, type[Predictor]] = {
    Task.CLASSIFICATION: ClassificationPredictor,
    Task.DETECTION: DetectionPredictor,
    Task.SEGMENTATION: SegmentationPredictor,
}


def build_predictor(spec: ModelSpec, device: torch.device | str | None = None) -> Predictor:
    """The one way to get a Predictor: from a ModelSpec."""
    return _PREDICTORS[spec.task](spec, device)


def _sizes(images: Sequence[np.ndarray]) -> tuple[tuple[int, int], ...]:
    return tuple((int(img.shape[0]), int(img.shape[1])) for img in images)


def _resize_center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """ImageNet-style eval transform: shorter side to size*256/224, centre crop, BGR->RGB."""
    height, width = image.shape[:2]
    short = round(size * 256 / 224)
    scale = short / min(height, width)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return cv2.cvtColor(resized[top : top + size, left : left + size], cv2.COLOR_BGR2RGB)
