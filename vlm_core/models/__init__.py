"""Model zoo, weights and the Predictor base (each task's predictor is in vlm_core.tasks)."""

from vlm_core.contracts.task import Task
from vlm_core.models.predictor import Predictor
from vlm_core.models.spec import PRETRAINED, ModelSpec, imagenet_class_names
from vlm_core.models.zoo import architectures, build_model, get_architecture

__all__ = [
    "PRETRAINED",
    "ModelSpec",
    "Predictor",
    "Task",
    "architectures",
    "build_model",
    "get_architecture",
    "imagenet_class_names",
]
