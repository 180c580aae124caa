"""One TaskProfile per task, and the registry that the rest of the code asks.

Adding a task means one module: a :class:`TaskProfile` subclass (and, for a task that is
not built in, ``Task.register(name)`` and ``register_architecture`` for its models),
registered with :func:`register_profile`.
"""

from __future__ import annotations

import torch

from vlm_core.contracts.result import register_output
from vlm_core.contracts.task import Task
from vlm_core.errors import ConfigError
from vlm_core.models.predictor import Predictor
from vlm_core.models.spec import Graph, ModelSpec
from vlm_core.scoring import Scorer
from vlm_core.tasks.base import (
    Distillation,
    TaskDefaults,
    TaskProfile,
    TrainingInput,
    TrainingOptions,
)
from vlm_core.tasks.classification import ClassificationProfile
from vlm_core.tasks.detection import DetectionProfile
from vlm_core.tasks.segmentation import SegmentationProfile

_PROFILES: dict[Task, TaskProfile] = {}


def register_profile(profile: TaskProfile) -> TaskProfile:
    """Make ``profile`` the one its task is served, trained and evaluated with."""
    _PROFILES[profile.task] = profile
    register_output(profile.task, profile.output_type)
    return profile


def get_profile(task: Task | str) -> TaskProfile:
    try:
        return _PROFILES[Task(task)]
    except (KeyError, ValueError):
        raise ConfigError(
            f"no profile for task {task!r}", hint=f"known tasks: {', '.join(map(str, _PROFILES))}"
        ) from None


def profiles() -> list[TaskProfile]:
    return list(_PROFILES.values())


def build_predictor(
    spec: ModelSpec, device: torch.device | str | None = None, graph: Graph = Graph.FROZEN
) -> Predictor:
    """The one way to get a Predictor: from a ModelSpec, through its task's profile."""
    return get_profile(spec.task).predictor(spec, device, graph)


for _profile in (ClassificationProfile(), DetectionProfile(), SegmentationProfile()):
    register_profile(_profile)

__all__ = [
    "Distillation",
    "Scorer",
    "TaskDefaults",
    "TaskProfile",
    "TrainingInput",
    "TrainingOptions",
    "build_predictor",
    "get_profile",
    "profiles",
    "register_profile",
]
