"""The model zoo: one obvious way to build a torchvision model from a ModelSpec."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from vlm_core.contracts.task import Task
from vlm_core.errors import ConfigError, UnknownArchitectureError, WeightsError
from vlm_core.models.spec import PRETRAINED, ModelSpec
from vlm_core.models.weights import load_state_dict

if TYPE_CHECKING:
    from vlm_core.models.optimize import ModelInput

IMAGENET_CROP_FRACTION = 224 / 256


@dataclass(frozen=True)
class Architecture:
    name: str
    task: Task
    #: Builds the network for ``num_classes`` outputs (detection: including background).
    build: Callable[[int], nn.Module]
    #: torchvision weights enum name, used for ``weights="pretrained"``.
    torchvision_name: str | None = None
    #: The network has one more output than class names: index 0 is the background
    #: (torchvision's detectors), so class ``k`` of the spec is output ``k + 1``.
    implicit_background: bool = False
    #: Classification: the share of the resized image's shorter side that the centre crop
    #: keeps (torchvision's ImageNet weights: 224 of 256). 1.0 keeps the whole image.
    crop_fraction: float = IMAGENET_CROP_FRACTION
    #: The submodules that ``vlm optimize`` transforms with torch.fx ("" is the whole
    #: network). A detector's forward has data-dependent control flow that torch.fx cannot
    #: trace, so it names the traceable parts that hold most of its arithmetic (its
    #: backbone); the rest (anchors, heads, RoI pooling, NMS) stays as it is.
    traceable_parts: tuple[str, ...] = ("",)

    def example_input(self, side: int) -> ModelInput:
        """What the network's forward takes, for one blank ``side`` x ``side`` image:
        torchvision's detectors take a list of CHW images, the others an NCHW batch."""
        if self.task is Task.DETECTION:
            return [torch.zeros(3, side, side)]
        return torch.zeros(1, 3, side, side)


def _tv(name: str, **kwargs: object) -> Callable[[int], nn.Module]:
    def build(num_classes: int) -> nn.Module:
        import torchvision

        return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)

    return build


_CLASSIFIERS = (
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "mobilenet_v2",
    "resnet18",
    "resnet50",
    "efficientnet_b0",
)
_DETECTORS = (
    "ssdlite320_mobilenet_v3_large",
    "fasterrcnn_mobilenet_v3_large_320_fpn",
    "fasterrcnn_mobilenet_v3_large_fpn",
)
_SEGMENTERS = ("lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large")


def _vgg6_bn(num_classes: int, width: int = 32) -> nn.Module:
    """Six 3x3 convolutions with batch norm in three stages (``width``, twice and four
    times as many channels), then global average pooling: a VGG-style classifier for small
    whole images such as Fashion-MNIST's. torchvision's ImageNet stems divide the input side
    by 4 at once, which leaves a 32 px image 1 px wide at the last stage; this keeps 8 px
    there."""
    from torchvision.ops import Conv2dNormActivation

    def stage(inputs: int, outputs: int) -> list[nn.Module]:
        return [Conv2dNormActivation(inputs, outputs, 3), Conv2dNormActivation(outputs, outputs, 3)]

    return nn.Sequential(
        *stage(3, width),
        nn.MaxPool2d(2),
        *stage(width, 2 * width),
        nn.MaxPool2d(2),
        *stage(2 * width, 4 * width),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(1),
        nn.Dropout(0.2),
        nn.Linear(4 * width, num_classes),
    )


def _vgg6_bn_slim(num_classes: int) -> nn.Module:
    """``vgg6_bn`` at half the width (16, 32, 64 channels): a quarter of its arithmetic, a
    student to distil it into."""
    return _vgg6_bn(num_classes, width=16)


def _fasterrcnn_mobilenet_v2(num_classes: int) -> nn.Module:
    """Faster R-CNN on MobileNetV2's stride-16 features: the detector that starts from the
    ImageNet MobileNetV2 weights this project can install offline. Sized for CPU
    training: 320 px frames, a small box head, fewer proposals."""
    import torchvision
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.ops import MultiScaleRoIAlign

    backbone = nn.Sequential(*list(torchvision.models.mobilenet_v2().features)[:14])
    backbone.out_channels = 96  # type: ignore[assignment]
    return FasterRCNN(
        backbone,
        min_size=240,
        max_size=320,
        rpn_anchor_generator=AnchorGenerator(sizes=((32, 64, 128, 192),), aspect_ratios=((0.5, 1.0, 2.0),)),
        box_roi_pool=MultiScaleRoIAlign(featmap_names=["0"], output_size=7, sampling_ratio=2),
        box_head=TwoMLPHead(96 * 7 * 7, 256),
        box_predictor=FastRCNNPredictor(256, num_classes),
        rpn_pre_nms_top_n_train=600,
        rpn_post_nms_top_n_train=300,
        rpn_pre_nms_top_n_test=300,
        rpn_post_nms_top_n_test=100,
        rpn_batch_size_per_image=128,
        box_batch_size_per_image=128,
        box_detections_per_img=50,
    )


def _lraspp_mobilenet_v2(num_classes: int) -> nn.Module:
    """LR-ASPP on MobileNetV2 (stride-8 detail, stride-32 context), so segmentation can
    start from the ImageNet MobileNetV2 weights."""
    import torchvision
    from torchvision.models._utils import IntermediateLayerGetter
    from torchvision.models.segmentation.lraspp import LRASPP

    features = torchvision.models.mobilenet_v2().features
    backbone = IntermediateLayerGetter(features, return_layers={"6": "low", "17": "high"})
    return LRASPP(backbone, low_channels=32, high_channels=320, num_classes=num_classes)


def _registry() -> dict[str, Architecture]:
    archs: dict[str, Architecture] = {}
    for name in _CLASSIFIERS:
        archs[name] = Architecture(name, Task.CLASSIFICATION, _tv(name), name)
    for name in _DETECTORS:
        archs[name] = Architecture(
            name, Task.DETECTION, _tv(name, weights_backbone=None), name, True, traceable_parts=("backbone",)
        )
    for name in _SEGMENTERS:
        archs[name] = Architecture(name, Task.SEGMENTATION, _tv(name, weights_backbone=None), name)
    archs["vgg6_bn"] = Architecture("vgg6_bn", Task.CLASSIFICATION, _vgg6_bn, crop_fraction=1.0)
    archs["vgg6_bn_slim"] = Architecture("vgg6_bn_slim", Task.CLASSIFICATION, _vgg6_bn_slim, crop_fraction=1.0)
    archs["fasterrcnn_mobilenet_v2"] = Architecture(
        "fasterrcnn_mobilenet_v2",
        Task.DETECTION,
        _fasterrcnn_mobilenet_v2,
        implicit_background=True,
        traceable_parts=("backbone",),
    )
    archs["lraspp_mobilenet_v2"] = Architecture("lraspp_mobilenet_v2", Task.SEGMENTATION, _lraspp_mobilenet_v2)
    return archs


ARCHITECTURES: dict[str, Architecture] = _registry()


def register_architecture(arch: Architecture) -> Architecture:
    """Add an architecture to the zoo (a new task's module registers its own)."""
    ARCHITECTURES[arch.name] = arch
    return arch


def architectures(task: Task | None = None) -> list[str]:
    return sorted(name for name, arch in ARCHITECTURES.items() if task is None or arch.task is task)


def get_architecture(name: str) -> Architecture:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise UnknownArchitectureError(
            f"unknown architecture {name!r}", hint=f"choose one of: {', '.join(architectures())}"
        ) from None


@lru_cache(maxsize=1)
def build_model(spec: ModelSpec) -> tuple[nn.Module, tuple[str, ...]]:
    """Build the network for ``spec`` with its weights loaded; returns (model, class names)."""
    arch = get_architecture(spec.arch)
    if arch.task is not spec.task:
        raise ConfigError(
            f"architecture {spec.arch!r} is a {arch.task.value} model, but the spec asks for {spec.task.value}",
            hint=f"{spec.task.value} architectures: {', '.join(architectures(spec.task))}",
        )
    if spec.weights == PRETRAINED:
        return _build_pretrained(arch, spec)
    if not spec.class_names:
        raise ConfigError(f"model {spec.name!r} needs class_names (or weights='pretrained')")
    num_classes = len(spec.class_names) + (1 if arch.implicit_background else 0)
    model = arch.build(num_classes)
    if spec.optimization is not None and spec.optimization.restructures:
        return _build_optimized(model, spec), spec.class_names
    if spec.weights:
        state = load_state_dict(spec.weights)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            first = str(exc).splitlines()[0]
            raise WeightsError(
                f"weights {spec.weights} do not fit {spec.arch} with {len(spec.class_names)} classes: {first}",
                hint="check that arch and class_names match the ones the weights were trained with",
            ) from None
    elif spec.backbone_weights:
        load_initial_weights(model, arch, spec.backbone_weights)
    return model, spec.class_names


def _build_optimized(model: nn.Module, spec: ModelSpec) -> nn.Module:
    """A ``vlm optimize`` version: the architecture restructured as its method stores it,
    its state loaded, then finished (see :mod:`vlm_core.models.optimize`)."""
    from vlm_core.models.optimize import finish, restructure

    assert spec.optimization is not None
    if not spec.weights:
        raise ConfigError(f"model {spec.name!r} is {spec.optimization.value}-optimised but has no weights file")
    arch = get_architecture(spec.arch)
    example = arch.example_input(spec.input_size or 224)
    state = load_state_dict(spec.weights)
    restructured = restructure(model, spec.optimization, example, arch.traceable_parts, arch.name, state)
    try:
        restructured.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsError(
            f"weights {spec.weights} are not a {spec.optimization.value} {spec.arch}: {str(exc).splitlines()[0]}",
            hint="an optimised version loads only with the method and architecture it was made with",
        ) from None
    return finish(restructured, spec.optimization, example, arch.traceable_parts)


def load_initial_weights(model: nn.Module, arch: Architecture, path: str) -> int:
    """Initialise ``model`` from a checkpoint: every tensor of the same name and shape (a
    checkpoint of this architecture: all of it with the same classes, everything but the
    head with others), else an ImageNet classifier's ``features.*`` into the backbone.

    Returns the number of tensors copied; raises when none fit.
    """
    source = load_state_dict(path)
    target = model.state_dict()
    copied = 0
    for key, tensor in target.items():
        if key in source and source[key].shape == tensor.shape:
            target[key] = source[key]
            copied += 1
            continue
        candidate = key
        for prefix in ("backbone.body.", "backbone.features.", "backbone."):
            if key.startswith(prefix):
                candidate = "features." + key[len(prefix) :]
                break
        if candidate.startswith("features.") and candidate in source and source[candidate].shape == tensor.shape:
            target[key] = source[candidate]
            copied += 1
    if copied == 0:
        raise WeightsError(f"no tensor of {path} fits {arch.name}")
    model.load_state_dict(target)
    return copied


def pretrained_weights(arch: Architecture) -> Any:
    """torchvision's default weights enum of ``arch`` (it carries the categories and file)."""
    import torchvision

    try:
        return torchvision.models.get_model_weights(arch.torchvision_name or arch.name).DEFAULT
    except (ValueError, KeyError):
        raise WeightsError(f"torchvision has no pretrained weights for {arch.name}") from None


def cached_weights_file(arch: Architecture) -> Path:
    """Where torch's hub cache keeps ``arch``'s pretrained weights, under torchvision's file
    name (``$TORCH_HOME/hub/checkpoints/<name>``): the file an offline machine needs."""
    from urllib.parse import urlparse

    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(pretrained_weights(arch).url).path).name


def pretrained_available(arch_name: str) -> bool:
    """Whether ``weights: pretrained`` of ``arch_name`` loads without a download."""
    try:
        return cached_weights_file(get_architecture(arch_name)).is_file()
    except (ConfigError, WeightsError):
        return False


def _build_pretrained(arch: Architecture, spec: ModelSpec) -> tuple[nn.Module, tuple[str, ...]]:
    """torchvision's pretrained model: from the hub cache when the file is there (loaded
    weights-only, like every other weights file), else downloaded by torchvision."""
    import torchvision

    weights = pretrained_weights(arch)
    categories = tuple(weights.meta["categories"])
    if arch.implicit_background:
        categories = categories[1:]
    if spec.class_names and tuple(spec.class_names) != categories:
        raise ConfigError(f"class_names given for {arch.name} differ from its pretrained categories")
    cached = cached_weights_file(arch)
    name = arch.torchvision_name or arch.name
    if cached.is_file():
        state = dict(load_state_dict(cached))
        model = torchvision.models.get_model(name, weights=None, **_pretrained_shape(name, weights, state))
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise WeightsError(
                f"{cached} does not fit {arch.name}: {str(exc).splitlines()[0]}",
                hint="delete it; it is not torchvision's file for this architecture",
            ) from None
        return model, categories
    try:
        model = torchvision.models.get_model(name, weights=weights)
    except Exception as exc:
        raise WeightsError(
            f"torchvision's pretrained weights for {arch.name} are not in the torch hub cache and cannot be "
            f"downloaded here ({type(exc).__name__})",
            hint=f"place {weights.url} at {cached}, or give a local weights path",
        ) from None
    return model, categories


def _pretrained_shape(name: str, weights: Any, state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The builder arguments that give the pretrained weights' shapes, without loading them."""
    import inspect

    import torchvision

    accepted = set(inspect.signature(torchvision.models.get_model_builder(name)).parameters)
    kwargs: dict[str, Any] = {"num_classes": len(weights.meta["categories"])}
    if "weights_backbone" in accepted:
        kwargs["weights_backbone"] = None
    if "aux_loss" in accepted:
        kwargs["aux_loss"] = any(key.startswith("aux_classifier.") for key in state)
    return kwargs


def default_device() -> torch.device:
    import os

    forced = os.environ.get("VLM_DEVICE")
    if forced:
        return torch.device(forced)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
