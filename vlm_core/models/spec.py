"""ModelSpec: everything needed to build a Predictor, as one frozen value."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

from vlm_core.contracts.task import Task
from vlm_core.errors import ConfigError

if TYPE_CHECKING:
    import torch

#: ``weights`` values that mean "torchvision's own pretrained weights for this arch".
PRETRAINED = "pretrained"


class Optimization(str, enum.Enum):
    """How a version was made from its parent by ``vlm optimize`` (see
    :mod:`vlm_core.models.optimize`); its weights file holds the transformed model's state."""

    #: Batch norms folded into the convolutions before them: float, the same outputs.
    FOLD_BN = "fold-bn"
    #: Post-training static int8 quantization (PyTorch FX graph mode, x86 backend),
    #: calibrated on held-out training data; runs on CPU, on any x86-64.
    INT8 = "int8"
    #: The same with oneDNN's kernels and full 8-bit activations (the x86 backend keeps
    #: 7 bits so that CPUs without VNNI cannot overflow): more accurate, and faster on
    #: CPUs with VNNI or AMX-INT8, which ``vlm optimize`` requires for it.
    INT8_ONEDNN = "int8-onednn"
    #: Weights and activations in bfloat16, channels-last memory: for GPUs and for CPUs
    #: with bfloat16 matrix units (AMX, AVX-512 BF16), where oneDNN runs it natively.
    BF16 = "bf16"
    #: The same in IEEE half precision (GPUs; CPUs with AVX-512 FP16).
    FP16 = "fp16"
    #: A student architecture (usually smaller) trained on Ray Train to match the parent's
    #: outputs as well as the labels (knowledge distillation); a plain float model of its
    #: own architecture.
    DISTILL = "distill"
    #: Structured pruning (torch-pruning, L2 magnitude): a share of each layer's channels
    #: removed, then the narrower network fine-tuned on Ray Train against the parent (as in
    #: ``distill``). Its state has the pruned widths, to which loading resizes the layers.
    PRUNE = "prune"

    @property
    def restructures(self) -> bool:
        """Whether loading the version changes its architecture's structure first (see
        :func:`vlm_core.models.optimize.restructure`); a distilled student is as built."""
        return self is not Optimization.DISTILL

    @property
    def trains(self) -> bool:
        """Whether the method trains on Ray Train, rather than transforming the trained
        model alone (:func:`vlm_core.models.optimize.compress`)."""
        return self in (Optimization.DISTILL, Optimization.PRUNE)

    @property
    def dtype(self) -> torch.dtype | None:
        """The floating-point type a low-precision version computes in (None: float32,
        or int8 kernels)."""
        import torch

        return {Optimization.BF16: torch.bfloat16, Optimization.FP16: torch.float16}.get(self)

    @property
    def quantized_engine(self) -> str | None:
        """The PyTorch quantized engine an int8 version is made for and runs on (None:
        not quantized)."""
        return {Optimization.INT8: "x86", Optimization.INT8_ONEDNN: "onednn"}.get(self)


class Graph(str, enum.Enum):
    """How a Predictor runs a float32 network on the CPU."""

    #: Module by module, as built (PyTorch's eager mode).
    EAGER = "eager"
    #: Traced and frozen with TorchScript's inference passes at load: batch norms folded,
    #: oneDNN convolutions with weights packed once, and no Python dispatch (nor the GIL)
    #: between operations. The outputs are the eager network's to float rounding.
    FROZEN = "frozen"


def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 ImageNet-1k labels, from torchvision's weights metadata (no download)."""
    from torchvision.models import MobileNet_V2_Weights

    return tuple(MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"])


@dataclass(frozen=True)
class ModelSpec:
    """How to build one model.

    ``weights`` is ``None`` (random init), ``"pretrained"`` (torchvision's weights, from
    the local torch hub cache or online), a path to a ``.safetensors`` / ``.pt`` file, or
    ``pkg://module/path`` for a file shipped in an installed package. In dicts,
    ``class_names: imagenet`` stands for the 1000 ImageNet labels.
    ``class_names`` are the labels the model predicts; for detection they exclude the
    implicit background class, for segmentation index 0 is the background.
    """

    task: Task
    arch: str
    weights: str | None = None
    class_names: tuple[str, ...] = ()
    name: str = ""
    version: str = "0"
    #: Detection: drop boxes scoring below this. Segmentation: unused.
    score_threshold: float = 0.5
    #: Classification: how many classes each result lists.
    top_k: int = 5
    #: Side of the square model input for classification and segmentation; detection
    #: models resize internally.
    input_size: int | None = None
    #: Detection: keep at most this many boxes per frame.
    max_detections: int = 100
    #: Optional ImageNet backbone weights file for architectures that accept one.
    backbone_weights: str | None = None
    #: The compression the weights were made with (None: the architecture as trained).
    optimization: Optimization | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.task, Task):
            try:
                object.__setattr__(self, "task", Task(self.task))
            except ValueError:
                raise ConfigError(f"unknown task {self.task!r}; use one of {[t.value for t in Task]}") from None
        object.__setattr__(self, "class_names", tuple(self.class_names))
        if self.optimization is not None and not isinstance(self.optimization, Optimization):
            try:
                object.__setattr__(self, "optimization", Optimization(self.optimization))
            except ValueError:
                raise ConfigError(
                    f"unknown optimization {self.optimization!r}; use one of {[o.value for o in Optimization]}"
                ) from None
        if not self.name:
            object.__setattr__(self, "name", self.arch)
        if not 0.0 <= self.score_threshold <= 1.0:
            raise ConfigError(f"score_threshold must be in [0, 1], got {self.score_threshold}")
        if self.top_k < 1:
            raise ConfigError(f"top_k must be >= 1, got {self.top_k}")
        if self.input_size is not None and self.input_size < 32:
            raise ConfigError(f"input_size must be >= 32, got {self.input_size}")

    def with_(self, **changes: Any) -> ModelSpec:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["task"] = self.task.value
        doc["class_names"] = list(self.class_names)
        doc["optimization"] = self.optimization.value if self.optimization else None
        return doc

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> ModelSpec:
        known = set(cls.__dataclass_fields__)
        doc = {k: v for k, v in doc.items() if not (k == "extra" and not v)}  # an old, always-empty field
        unknown = set(doc) - known
        if unknown:
            raise ConfigError(f"unknown model spec field(s) {sorted(unknown)}; known: {sorted(known)}")
        values = dict(doc)
        if values.get("class_names") == "imagenet":
            values["class_names"] = imagenet_class_names()
        return cls(**values)
