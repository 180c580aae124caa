"""Model compression, one :class:`~vlm_core.models.spec.Optimization` at a time.

A compressed version is stored like any other: one safetensors state dict. What makes it
loadable is that every method is a deterministic change of structure, applied to the
architecture before its state is loaded (:func:`restructure`), then finished
(:func:`finish`):

- ``fold-bn``: torch.fx folds each batch norm into its convolution; the state is the
  folded graph's.
- ``int8`` / ``int8-onednn``: FX graph mode prepares the model for static quantization
  with that method's engine; the state holds the float weights and every observer's
  calibrated range, so converting it after loading gives the very model that was
  measured, with no calibration data at load time. The converted parts are then traced
  and frozen with TorchScript: int8 runs on CPU alone, and the frozen graph spares the
  Python dispatch of its many small quantize-aware ops (same outputs, bit for bit).
- ``bf16`` / ``fp16``: the whole network cast to that precision, in channels-last memory;
  the state is the cast weights, and the Predictor feeds it inputs of the same type.

``fold-bn`` and ``int8`` transform the architecture's ``traceable_parts``: the whole
network for classifiers and segmenters; a detector's backbone, whose input is captured by
running the detector on an example image, while its heads, anchors, RoI pooling and NMS
stay float.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.jit._trace import TracerWarning

from vlm_core.errors import ConfigError
from vlm_core.models.spec import Optimization


@contextmanager
def _quiet_deprecations() -> Iterator[None]:
    # torch 2.14 still ships FX graph mode quantization and TorchScript but warns that they
    # give way to torchao's PT2E API and torch.compile, which do not yet run these int8
    # kernels faster here (torch.compile breaks its graph at each quantized op).
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
        # The trace reads each quantize step's scale once: a constant of the converted model.
        warnings.filterwarnings("ignore", category=TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.ao")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"vlm_core\.models\.optimize")
        warnings.filterwarnings("ignore", message=r".*(reduce_range|quantized tensor creation).*")
        yield


#: What a network's forward takes: an NCHW batch, or a list of CHW images (detectors).
ModelInput = torch.Tensor | list[torch.Tensor]


#: The whole network, as one traceable part.
WHOLE: tuple[str, ...] = ("",)


def restructure(
    model: nn.Module, method: Optimization, example: ModelInput, parts: tuple[str, ...] = WHOLE, arch: str = ""
) -> nn.Module:
    """``model`` (in eval mode, its weights loaded or not) in the structure whose state
    ``method`` stores: each of ``parts`` (the architecture's ``traceable_parts``)
    transformed. ``arch`` names the architecture in errors."""
    model = model.eval()
    if method.dtype is not None:
        if parts != WHOLE:
            raise ConfigError(
                f"{method.value} casts a whole network, and {arch or 'this architecture'} computes in float32 "
                "outside its traceable parts (anchors, RoI pooling, NMS)",
                hint="int8 and fold-bn transform a detector's backbone alone",
            )
        return model.to(method.dtype)
    try:
        if method is Optimization.FOLD_BN:
            from torch.fx.experimental.optimization import fuse

            for part in parts:
                model = _replace(model, part, fuse(model.get_submodule(part)))
            return model
        from torch.ao.quantization import get_default_qconfig_mapping
        from torch.ao.quantization.quantize_fx import prepare_fx

        mapping = get_default_qconfig_mapping(_quantized_engine(method))
        # prepare_fx takes example arguments: for a part, those it is really called with.
        inputs = _part_inputs(model, parts, example)
        with _quiet_deprecations():
            for part, args in zip(parts, inputs, strict=True):
                model = _replace(model, part, prepare_fx(model.get_submodule(part), mapping, args))
        return model
    except (torch.fx.proxy.TraceError, TypeError, NotImplementedError, AssertionError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(
            f"{method.value} needs a model torch.fx can trace, and {arch or 'this architecture'} is not one: {first}",
            hint="an architecture whose whole forward does not trace names the parts that do (traceable_parts)",
        ) from None


def finish(model: nn.Module, method: Optimization, example: ModelInput, parts: tuple[str, ...] = WHOLE) -> nn.Module:
    """The servable model from the restructured one (after its state was loaded); int8
    parts are traced on what they receive when the model runs ``example``."""
    if method.quantized_engine is not None:
        from torch.ao.quantization.quantize_fx import convert_fx

        _quantized_engine(method)
        for part in parts:
            prepared = model.get_submodule(part)
            if not isinstance(prepared, torch.fx.GraphModule):
                raise TypeError(f"int8 finishes a model prepared by restructure(), not a {type(prepared).__name__}")
            with _quiet_deprecations():
                model = _replace(model, part, convert_fx(prepared))
        with torch.no_grad(), _quiet_deprecations():
            for part, args in zip(parts, _part_inputs(model, parts, example), strict=True):
                # A detector's backbone returns a dict of feature maps: strict=False lets it.
                traced = torch.jit.trace(  # type: ignore[no-untyped-call]
                    model.get_submodule(part), args, strict=False, check_trace=False
                )
                model = _replace(model, part, torch.jit.freeze(traced))
    elif method.dtype is not None:
        # oneDNN's bfloat16 and float16 convolutions (and cuDNN's) want channels-last.
        model = model.to(memory_format=torch.channels_last)
    return model


def compress(
    model: nn.Module,
    method: Optimization,
    calibration: Iterable[ModelInput],
    parts: tuple[str, ...] = WHOLE,
    arch: str = "",
) -> nn.Module:
    """Apply ``method`` to a trained float ``model`` (left as it is). Returns the
    restructured model whose ``state_dict`` is what a registry version of ``method`` stores;
    int8 runs ``calibration`` batches (model-ready inputs) through it first."""
    if method is Optimization.INT8_ONEDNN and not torch.cpu._is_vnni_supported():
        # Its full 8-bit activations could overflow the kernels of a CPU without VNNI.
        raise ConfigError(
            "int8-onednn needs a CPU with VNNI or AMX-INT8, and this one has neither",
            hint="use --method int8: its 7-bit activations cannot overflow on any x86-64",
        )
    if not method.restructures:
        raise ConfigError(
            f"{method.value} trains a student model rather than transforming this one",
            hint="vlm optimize --method distill --student ARCH trains it on Ray Train",
        )
    batches = iter(calibration)
    first = next(batches, None)
    if first is None:
        raise ConfigError(f"{method.value} needs calibration data, and none was given")
    restructured = restructure(copy.deepcopy(model), method, first[:1], parts, arch)
    if method.quantized_engine is not None:
        with torch.no_grad():
            restructured(first)
            for batch in batches:
                restructured(batch)
    return restructured


def _part_inputs(model: nn.Module, parts: tuple[str, ...], example: ModelInput) -> list[tuple[Any, ...]]:
    """The positional arguments each part is called with when ``model`` runs ``example``."""
    if parts == WHOLE:
        return [(example,)]
    seen: dict[str, tuple[Any, ...]] = {}

    def record(part: str) -> Callable[[nn.Module, tuple[Any, ...]], None]:
        def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
            seen.setdefault(part, args)

        return hook

    handles = [model.get_submodule(part).register_forward_pre_hook(record(part)) for part in parts]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    if missing := [part for part in parts if part not in seen]:
        raise ConfigError(f"the model's forward never called its part(s) {', '.join(missing)} on an example image")
    return [seen[part] for part in parts]


def _replace(model: nn.Module, part: str, module: nn.Module) -> nn.Module:
    if not part:
        return module
    model.set_submodule(part, module)
    return model


def _quantized_engine(method: Optimization) -> str:
    """Select ``method``'s quantized engine (process-wide: it decides how weights are
    packed for the kernels when a model is converted) and return its name."""
    engine = method.quantized_engine
    if engine is None:
        raise ValueError(f"{method.value} is not a quantization")
    if engine not in torch.backends.quantized.supported_engines:
        raise ConfigError(
            f"{method.value} needs PyTorch's {engine} quantized engine, which this build of torch lacks",
            hint=f"this build has {', '.join(torch.backends.quantized.supported_engines)}",
        )
    torch.backends.quantized.engine = engine
    return engine


def runs_on(method: Optimization | None, device: torch.device) -> torch.device:
    """The device a model of ``method`` can run on: int8 kernels are the CPU's."""
    return torch.device("cpu") if method is not None and method.quantized_engine is not None else device
