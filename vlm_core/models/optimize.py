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
  Python dispatch of its many small quantize-aware ops (same outputs, bit for bit). Each
  frozen part runs every batch at the batch size of its first call
  (:class:`FirstBatchSize`), the one shape its kernels are fast at.
- ``bf16`` / ``fp16``: the whole network cast to that precision, in channels-last memory;
  the state is the cast weights, and the Predictor feeds it inputs of the same type.
- ``prune``: :func:`prune_channels` removes channels; the state has the narrower widths,
  and loading resizes each layer to them (:func:`fit_to_state`) before loading it.

``fold-bn`` and ``int8`` transform the architecture's ``traceable_parts``: the whole
network for classifiers and segmenters; a detector's backbone, whose input is captured by
running the detector on an example image, while its heads, anchors, RoI pooling and NMS
stay float.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, cast

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
    model: nn.Module,
    method: Optimization,
    example: ModelInput,
    parts: tuple[str, ...] = WHOLE,
    arch: str = "",
    state: Mapping[str, torch.Tensor] | None = None,
) -> nn.Module:
    """``model`` (in eval mode, its weights loaded or not) in the structure whose state
    ``method`` stores: each of ``parts`` (the architecture's ``traceable_parts``)
    transformed. ``arch`` names the architecture in errors; ``state`` is the stored state,
    which a pruned version's widths come from."""
    model = model.eval()
    if method is Optimization.PRUNE:
        if state is None:
            raise ValueError("a pruned model is restructured to the widths of its stored state")
        return fit_to_state(model, state, arch)
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
                model = _replace(model, part, _broadcasts_in_float(convert_fx(prepared)))
        model = _trace_parts(model, parts, example, lambda traced: FirstBatchSize(torch.jit.freeze(traced)))
    elif method.dtype is not None:
        # oneDNN's bfloat16 and float16 convolutions (and cuDNN's) want channels-last.
        model = model.to(memory_format=torch.channels_last)
    return model


def _broadcasts_in_float(converted: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """``converted`` with each ``quantized::mul`` computed by :func:`requantized_mul`."""
    for node in converted.graph.nodes:
        if node.op == "call_function" and node.target is torch.ops.quantized.mul:
            node.target = requantized_mul
    converted.recompile()
    return converted


def requantized_mul(a: torch.Tensor, b: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """``quantized::mul``, with a broadcast computed in float between the dequantized
    operands, then quantized to the same scale: the same values, since the quantized
    kernel requantizes the same product, but it broadcasts element by element. A
    squeeze-and-excitation block's scaling, (N, C, 1, 1) by (N, C, H, W), took 2 to 8
    times less that way at ``mobilenet_v3_small``'s shapes at 48 px on one thread (a
    one-off profile). A traced graph keeps the branch its example shapes took."""
    if a.shape == b.shape:
        return torch.ops.quantized.mul(a, b, scale, zero_point)
    return torch.quantize_per_tensor(a.dequantize() * b.dequantize(), scale, zero_point, b.dtype)


class FirstBatchSize(nn.Module):
    """A frozen int8 graph that runs every batch at the batch size of its first call.

    The quantized kernels of a frozen graph run fast only at the input shape they first
    ran with. For ``mobilenet_v3_small`` at 48 px on one thread (int8-onednn), a graph
    first run on 16 frames took 2.8 ms for 16 and 6.7 ms for 1; one first run on 1 frame
    took 17 ms for 16 (a one-off profile). A smaller batch is therefore padded with zeros
    up to that size (a frame's outputs do not depend on the others in eval mode, and the
    quantization scales are fixed), and a larger one runs in chunks of it. A model replica
    warms up first at the frames a request carries (``Predictor.warmup_sizes``)."""

    def __init__(self, graph: nn.Module) -> None:
        super().__init__()
        self.graph = graph
        #: The batch size every call runs at, once known.
        self.size: int | None = None

    def forward(self, batch: torch.Tensor) -> Any:
        count = batch.shape[0]
        size = self.size = self.size or count
        if count == size:
            return self.graph(batch)
        if count < size:
            padded = torch.cat([batch, batch.new_zeros((size - count, *batch.shape[1:]))])
            return _combine([self.graph(padded)], lambda outs: outs[0][:count])
        chunks = [self(batch[start : start + size]) for start in range(0, count, size)]
        return _combine(chunks, torch.cat)


def _combine(outputs: list[Any], combine: Callable[[list[torch.Tensor]], torch.Tensor]) -> Any:
    """The outputs of one or more calls of a part, combined tensor by tensor: each output
    is a tensor, a mapping of them (a detector backbone's feature maps) or a sequence."""
    first = outputs[0]
    if isinstance(first, torch.Tensor):
        return combine(outputs)
    if isinstance(first, Mapping):
        return cast(Any, type(first))((key, _combine([out[key] for out in outputs], combine)) for key in first)
    if isinstance(first, (list, tuple)):
        return type(first)(_combine(list(parts), combine) for parts in zip(*outputs, strict=True))
    raise TypeError(f"a batched part returns tensors, not {type(first).__name__}")


def freeze_for_inference(model: nn.Module, example: ModelInput, parts: tuple[str, ...] = WHOLE) -> nn.Module:
    """A float32 CPU model with each of ``parts`` traced and frozen by TorchScript's
    inference passes (see :class:`~vlm_core.models.spec.Graph`); the rest runs as it is.
    ``model`` itself is left as it is: a copy has its parts replaced.

    Raises where a part's trace would bake in a value computed from its example (Python
    control flow on tensor data), which would not hold for other inputs: the TracerWarning,
    or a SystemError whose context it is when torch's C++ raised it."""
    model = model.eval() if parts == WHOLE else copy.deepcopy(model).eval()
    return _trace_parts(model, parts, example, torch.jit.optimize_for_inference, exact=True)


def _trace_parts(
    model: nn.Module,
    parts: tuple[str, ...],
    example: ModelInput,
    freeze: Callable[[Any], Any],
    exact: bool = False,
) -> nn.Module:
    """Each part traced on what it receives when ``model`` runs ``example``, then frozen;
    ``exact``: a TracerWarning raises."""
    with torch.no_grad(), _quiet_deprecations():
        if exact:
            warnings.simplefilter("error", TracerWarning)
        for part, args in zip(parts, _part_inputs(model, parts, example), strict=True):
            # A detector's backbone returns a dict of feature maps: strict=False lets it.
            traced = torch.jit.trace(  # type: ignore[no-untyped-call]
                model.get_submodule(part), args, strict=False, check_trace=False
            )
            model = _replace(model, part, freeze(traced))
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
    if method.trains:
        raise ConfigError(
            f"{method.value} trains on Ray Train rather than transforming the trained model alone",
            hint=f"vlm optimize --method {method.value} runs it (distill with --student ARCH, prune with --keep)",
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


def prune_channels(model: nn.Module, keep: float, example: torch.Tensor, outputs: int) -> nn.Module:
    """``model`` (changed in place) with ``keep`` of each layer's output channels, those of
    the largest L2 norm; torch-pruning's dependency graph prunes coupled layers (residual
    sums, depthwise convolutions, batch norms, the next layer's inputs) together. Layers
    that emit the ``outputs`` class scores keep their width."""
    import torch_pruning as tp

    if not 0.0 < keep < 1.0:
        raise ConfigError(f"--keep must be between 0 and 1 (the share of channels kept), got {keep}")
    heads = [
        module
        for module in model.modules()
        if (isinstance(module, nn.Linear) and module.out_features == outputs)
        or (isinstance(module, nn.Conv2d) and module.out_channels == outputs)
    ]
    pruner = tp.pruner.MetaPruner(
        model.eval(),
        example,
        importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=1.0 - keep,
        ignored_layers=heads,
    )
    pruner.step()
    return model


def fit_to_state(model: nn.Module, state: Mapping[str, torch.Tensor], arch: str = "") -> nn.Module:
    """``model`` with each convolution, batch norm and linear layer whose weight in ``state``
    has another shape replaced by one of that width (same kernel, stride, padding; a
    depthwise convolution stays depthwise): the structure of a pruned version's state."""
    for name, module in list(model.named_modules()):
        weight = state.get(f"{name}.weight")
        if weight is None or not isinstance(getattr(module, "weight", None), torch.Tensor):
            continue
        if tuple(module.weight.shape) == tuple(weight.shape):
            continue
        model = _replace(model, name, _resized(module, tuple(weight.shape), name, arch))
    return model


def _resized(module: nn.Module, shape: tuple[int, ...], name: str, arch: str) -> nn.Module:
    if type(module) is nn.Conv2d:
        depthwise = module.groups > 1 and module.groups == module.in_channels == module.out_channels
        groups = shape[0] if depthwise else module.groups
        pair = tuple[int, int]
        return nn.Conv2d(
            shape[1] * groups,
            shape[0],
            cast(pair, module.kernel_size),
            cast(pair, module.stride),
            cast(pair | str, module.padding),
            cast(pair, module.dilation),
            groups,
            bias=module.bias is not None,
            padding_mode=module.padding_mode,
        )
    if type(module) is nn.BatchNorm2d:
        return nn.BatchNorm2d(shape[0], module.eps, module.momentum, module.affine, module.track_running_stats)
    if type(module) is nn.Linear:
        return nn.Linear(shape[1], shape[0], bias=module.bias is not None)
    raise ConfigError(
        f"{name or 'the model'} of {arch or 'this architecture'} is a {type(module).__name__} whose stored "
        f"weight has another shape {shape}, and only convolutions, batch norms and linear layers are resized",
        hint="load it into the architecture it was pruned from",
    )


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
