"""TaskProfile: everything that differs by task, in one object per task.

A profile owns its task's predictor (with the preprocessing that travels with its
weights), its training pieces (targets, transforms, batching, loss, a quick validation),
its evaluation and primary metric, its defaults, its part of the result contract and its
ignore index. The rest of the code asks the profile (:func:`vlm_core.tasks.get_profile`).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from vlm_core.contracts.sample import Sample
from vlm_core.contracts.task import Task
from vlm_core.models.predictor import Predictor
from vlm_core.models.zoo import IMAGENET_CROP_FRACTION
from vlm_core.scoring import Scorer


@dataclass(frozen=True)
class TaskDefaults:
    """What a task uses when the user does not say."""

    #: Served by default (`vlm bench`, a spec without an arch).
    serving_arch: str
    #: Trained by default (`vlm train`): starts from the offline ImageNet weights where it can.
    training_arch: str
    epochs: int
    #: Per training worker.
    batch_size: int
    lr: float
    #: Square training input side; None where the model resizes internally. The serving
    #: side is the predictor's own (:attr:`Predictor.default_input_size`).
    training_input_size: int | None
    #: Frames per processor batch in `vlm bench`.
    bench_batch_size: int = 8


@dataclass(frozen=True)
class TrainingInput:
    """How training shapes a model's input, as the Predictor will when serving."""

    #: Square side; None where the model resizes internally (detection).
    size: int | None = None
    #: Segmentation: random crops of this side of the resized input.
    crop_size: int | None = None
    #: Classification: the centre crop's share of the shorter side (the architecture's).
    crop_fraction: float = IMAGENET_CROP_FRACTION


@dataclass(frozen=True)
class Distillation:
    """Knowledge distillation: a trained teacher's outputs as a second target.

    The loss is ``(1 - weight) * task loss + weight * T² * KL(teacher ‖ student)`` on the
    class scores softened by ``temperature`` T (Hinton et al., 2015); T² keeps the soft
    term's gradients on the scale of the hard one's.
    """

    #: The teacher, in eval mode, on the student's device; it is never updated.
    teacher: nn.Module
    #: A classifier teacher's square input side, where it differs from the student's (its
    #: batches are resized to it); a segmenter teacher sees the student's crops as they are.
    input_size: int | None = None
    weight: float = 0.7
    temperature: float = 4.0

    def teacher_inputs(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.input_size is None or tuple(inputs.shape[-2:]) == (self.input_size, self.input_size):
            return inputs
        size = (self.input_size, self.input_size)
        return nn.functional.interpolate(inputs, size=size, mode="bilinear", align_corners=False, antialias=True)

    def loss(self, task_loss: torch.Tensor, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """The blended loss from the student's and the teacher's class scores (classes on
        dimension 1: N x C, or N x C x H x W per pixel, the teacher's resized to the
        student's)."""
        if teacher.dim() == 4 and teacher.shape[-2:] != student.shape[-2:]:
            teacher = nn.functional.interpolate(teacher, size=student.shape[-2:], mode="bilinear", align_corners=False)
        t = self.temperature
        log_student = nn.functional.log_softmax(student / t, dim=1)
        log_teacher = nn.functional.log_softmax(teacher.detach() / t, dim=1)
        # Summed over classes, averaged over everything else (samples, and pixels).
        soft = (log_teacher.exp() * (log_teacher - log_student)).sum(1).mean()
        return (1 - self.weight) * task_loss + self.weight * t * t * soft


@dataclass(frozen=True)
class TrainingOptions:
    """Loss settings shared by every task; each profile uses what applies to it."""

    label_smoothing: float = 0.1
    #: Train against a teacher's outputs too (profiles whose ``distills`` is true).
    distillation: Distillation | None = None


class TaskProfile(abc.ABC):
    task: ClassVar[Task]
    #: What one model of the task is called: "classifier".
    noun: ClassVar[str]
    #: The Serve deployment that serves the task: "Classifier".
    deployment_name: ClassVar[str]
    #: The evaluation metric the promotion gate compares.
    primary_metric: ClassVar[str]
    #: The Predictor class; its preprocessing is the one training normalises for.
    predictor: ClassVar[type[Predictor]]
    #: The output type of the result contract's ``tasks.<name>``.
    output_type: ClassVar[Any]
    defaults: ClassVar[TaskDefaults]
    #: Training recipes of built-in datasets by scheme (``fashion-mnist``), used in place
    #: of ``defaults`` for that data.
    recipes: ClassVar[Mapping[str, TaskDefaults]] = {}
    #: Target value that the loss and the metrics skip (segmentation's 255), if any.
    ignore_index: ClassVar[int | None] = None
    #: Whether class index 0 is the background, part of the class list (segmentation).
    background_in_classes: ClassVar[bool] = False
    #: Whether the Ray Train loader may move batches to the device (tensors, not lists).
    loader_moves_batches: ClassVar[bool] = True
    #: Whether training takes ``--crop-size`` (random crops of the resized input).
    trains_on_crops: ClassVar[bool] = False
    #: Whether training saves a confusion-matrix PNG of the evaluation.
    confusion_artifact: ClassVar[bool] = False
    #: Whether training can distil a teacher (:class:`Distillation`): the task's outputs
    #: are class scores. A detector's are proposals, boxes and scores after NMS.
    distills: ClassVar[bool] = False

    # -- serving ------------------------------------------------------------------------
    def evaluation_overrides(self) -> dict[str, Any]:
        """ModelSpec settings for evaluation (detection scores low boxes too, for mAP)."""
        return {}

    def bench_class_names(self, count: int) -> tuple[str, ...]:
        names = tuple(f"class_{i}" for i in range(count))
        return ("background", *names) if self.background_in_classes else names

    # -- training -----------------------------------------------------------------------
    def training_defaults(self, data: str) -> TaskDefaults:
        """What a user who gives only ``--task`` and ``--data`` gets: the recipe of a
        built-in dataset (``fashion-mnist``, ``scenes://?n=…``), else the task's defaults."""
        return self.recipes.get(data.split(":", 1)[0], self.defaults)

    @abc.abstractmethod
    def training_transform(self, shape: TrainingInput, train: bool) -> Callable[..., Any]:
        """The torchvision v2 transform of one training (or validation) item."""

    @abc.abstractmethod
    def training_item(self, sample: Sample, rgb: np.ndarray, transform: Callable[..., Any]) -> Any:
        """(input, target) of one sample, its image already RGB."""

    def collate(self) -> Callable[[list[Any]], Any] | None:
        """How a loader batches items (None: default stacking)."""
        return None

    @abc.abstractmethod
    def loss(self, model: nn.Module, batch: Any, options: TrainingOptions) -> torch.Tensor: ...

    @abc.abstractmethod
    def validation_counts(self, model: nn.Module, batches: Iterable[Any], classes: int) -> torch.Tensor:
        """Sums over validation ``batches`` from which :meth:`validation_metrics` computes
        the per-epoch figure. They add up across shards, so training workers each count a
        share of the validation split and sum their counts. No batches: zeros."""

    @abc.abstractmethod
    def validation_metrics(self, counts: torch.Tensor) -> dict[str, float]:
        """The per-epoch progress figure (``val_*``) from summed :meth:`validation_counts`;
        the final metrics come from :meth:`scorer`, through the serving Predictor."""

    # -- evaluation ---------------------------------------------------------------------
    @abc.abstractmethod
    def scorer(self, class_count: int) -> Scorer: ...
