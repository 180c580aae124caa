"""Classification: top-k labels per frame (``tasks.classification``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import v2

from vlm_core.contracts.result import Classification, ClassScore, TaskOutput
from vlm_core.contracts.sample import Sample
from vlm_core.contracts.task import Task
from vlm_core.models.predictor import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Predictor,
    PreparedBatch,
    crop_short_side,
    image_sizes,
    resize_center_crop,
)
from vlm_core.models.spec import Graph, ModelSpec
from vlm_core.models.zoo import get_architecture
from vlm_core.scoring import ClassificationScorer, Scorer
from vlm_core.tasks.base import TaskDefaults, TaskProfile, TrainingInput, TrainingOptions


class ClassificationPredictor(Predictor):
    task = Task.CLASSIFICATION
    default_input_size = 224

    def __init__(self, spec: ModelSpec, device: torch.device | str | None = None, graph: Graph = Graph.FROZEN) -> None:
        super().__init__(spec, device, graph)
        self.crop_fraction = get_architecture(spec.arch).crop_fraction

    def decode_short_side(self) -> int:
        # resize_center_crop scales the shorter side to this, then crops.
        return crop_short_side(self.input_size or self.default_input_size, self.crop_fraction)

    def _preprocess(self, images: Sequence[np.ndarray]) -> PreparedBatch:
        size = self.input_size or self.default_input_size
        crops = [resize_center_crop(img, size, self.crop_fraction) for img in images]
        return PreparedBatch(self._to_batch(crops), image_sizes(images))

    def _infer(self, batch: PreparedBatch) -> list[TaskOutput]:
        assert isinstance(batch.inputs, torch.Tensor)
        probs = torch.softmax(self.model(batch.inputs).float(), dim=1)
        k = min(self.spec.top_k, probs.shape[1])
        scores, ids = probs.topk(k, dim=1)
        ref, names = self.model_ref, self.class_names
        return [
            Classification(ref, tuple(ClassScore(names[i], i, s) for s, i in zip(row_scores, row_ids, strict=True)))
            for row_scores, row_ids in zip(scores.tolist(), ids.tolist(), strict=True)
        ]


class ClassificationProfile(TaskProfile):
    task = Task.CLASSIFICATION
    noun = "classifier"
    deployment_name = "Classifier"
    primary_metric = ClassificationScorer.primary_metric
    predictor = ClassificationPredictor
    output_type = Classification
    defaults = TaskDefaults(
        serving_arch="mobilenet_v3_small",
        training_arch="mobilenet_v3_small",
        epochs=10,
        batch_size=128,
        lr=3e-3,
        training_input_size=48,
        bench_batch_size=16,
    )
    recipes = {
        # 28 px greyscale garments: a network that keeps their resolution, the whole image
        # in the crop (see the zoo's vgg6_bn); measured in README, "The recipe".
        "fashion-mnist": replace(defaults, training_arch="vgg6_bn", training_input_size=32, epochs=12),
    }
    confusion_artifact = True
    distills = True

    def training_transform(self, shape: TrainingInput, train: bool) -> Callable[..., Any]:
        size = shape.size or ClassificationPredictor.default_input_size
        short = crop_short_side(size, shape.crop_fraction)  # the Predictor's eval transform: resize, centre crop
        steps: list[v2.Transform] = [v2.ToImage(), v2.Resize(short, antialias=True)]
        if train:
            # Random crops of the margin the eval crop drops; where it keeps the whole
            # image, of a padded copy (the small-image recipe: shifts of up to 1/8).
            padding = 0 if short > size else size // 8
            steps += [v2.RandomCrop(size, padding=padding), v2.RandomHorizontalFlip()]
        else:
            steps += [v2.CenterCrop(size)]
        steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
        return v2.Compose(steps)

    def training_item(self, sample: Sample, rgb: np.ndarray, transform: Callable[..., Any]) -> Any:
        return transform(rgb), int(sample.label if sample.label is not None else -1)

    def loss(self, model: nn.Module, batch: Any, options: TrainingOptions) -> torch.Tensor:
        inputs, targets = batch
        logits = model(inputs)
        loss = F.cross_entropy(logits, targets, label_smoothing=options.label_smoothing)
        if (distill := options.distillation) is None:
            return loss
        with torch.no_grad():
            teacher = distill.teacher(distill.teacher_inputs(inputs))
        return distill.loss(loss, logits, teacher)

    def validation_counts(self, model: nn.Module, batches: Iterable[Any], classes: int) -> torch.Tensor:
        correct = total = 0
        for inputs, targets in batches:
            correct += int((model(inputs).argmax(1) == targets).sum())
            total += len(targets)
        return torch.tensor([correct, total], dtype=torch.int64)

    def validation_metrics(self, counts: torch.Tensor) -> dict[str, float]:
        correct, total = counts.tolist()
        return {"val_accuracy": correct / max(1, total)}

    def scorer(self, class_count: int) -> Scorer:
        return ClassificationScorer(class_count)
