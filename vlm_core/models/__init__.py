"""Model zoo, weights and the Predictor base (each task's predictor is in vlm_core.tasks).

The names that need torch load on first use, so that importing the light ones (a
ModelSpec, say, in a stream processor that never runs a model) does not load torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from vlm_core.contracts.task import Task
from vlm_core.models.spec import PRETRAINED, ModelSpec, imagenet_class_names

if TYPE_CHECKING:
    from vlm_core.models.predictor import Predictor
    from vlm_core.models.zoo import architectures, build_model, get_architecture

_LAZY = {
    "Predictor": "vlm_core.models.predictor",
    "architectures": "vlm_core.models.zoo",
    "build_model": "vlm_core.models.zoo",
    "get_architecture": "vlm_core.models.zoo",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
