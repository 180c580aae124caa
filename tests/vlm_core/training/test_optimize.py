import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.conftest import REGISTRY_CLASSES, register_classifier, write_colour_folder
from vlm_core.errors import ConfigError
from vlm_core.models import ModelSpec, Task, build_model
from vlm_core.models.optimize import FirstBatchSize, compress, finish, fit_to_state, prune_channels
from vlm_core.models.spec import Optimization
from vlm_core.models.zoo import get_architecture
from vlm_core.registry import ModelRegistry, ModelVersion
from vlm_core.tasks import build_predictor
from vlm_core.training.optimize import optimize_version, pruned_start


@pytest.fixture
def folder(tmp_path: Path) -> str:
    return write_colour_folder(tmp_path / "data")


@pytest.mark.parametrize("method", [method for method in Optimization if not method.trains])
def test_an_optimised_version_records_its_method_and_figures_and_serves_what_was_measured(
    tmp_path: Path, folder: str, method: Optimization
) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    register_classifier(registry, 0.5)
    if method is Optimization.INT8_ONEDNN and not torch.cpu._is_vnni_supported():
        with pytest.raises(ConfigError, match="needs a CPU with VNNI"):
            optimize_version(registry, "cls@1", method, folder, calibration_samples=16, timing_frames=16)
        return
    report = optimize_version(
        registry, "cls@1", method, folder, calibration_samples=16, timing_frames=16, timing_passes=2
    )
    version = report.version
    assert (version.ref, version.parent, version.optimization) == ("cls@2", 1, method)
    assert registry.get("cls", 2) == version  # stored as written
    assert len(report.fps) == len(report.source_fps) == 2 and min(report.fps + report.source_fps) > 0
    assert version.metrics["speedup"] == pytest.approx(version.metrics["fps"] / version.metrics["source_fps"])
    comparison = report.comparison
    assert len(comparison.infer_fps) == len(comparison.source_infer_fps) == 2
    assert min(comparison.infer_fps + comparison.source_infer_fps) > 0
    assert version.metrics["infer_speedup"] == report.infer_speedup > 0
    assert version.metrics["accuracy"] == report.metrics["accuracy"]
    assert version.metrics["source_accuracy"] == report.source_metrics["accuracy"]
    assert report.eval_samples > 0 and report.calibration_samples > 0
    doc = report.to_json()
    assert doc["host"]["cpus"] >= 1 and doc["host"]["cpu"]  # where the speed-up was measured
    assert doc["method"] == method.value and doc["drop_points"] == pytest.approx(
        100 * (report.source_metrics["accuracy"] - report.metrics["accuracy"]), abs=1e-3
    )
    # The registry's version loads as a replica loads it, and gives the measured model's outputs.
    images = [np.full((40, 40, 3), 30 * i, np.uint8) for i in range(4)]
    served = build_predictor(version.spec(registry.root), device="cpu")
    source = build_predictor(registry.get("cls", 1).spec(registry.root), device="cpu")
    served_scores = [[c.score for c in o.top_k] for o in served.predict(images)]  # type: ignore[union-attr]
    source_scores = [[c.score for c in o.top_k] for o in source.predict(images)]  # type: ignore[union-attr]
    tolerance = 1e-4 if method is Optimization.FOLD_BN else 0.1  # folding keeps the function
    assert np.allclose(served_scores, source_scores, atol=tolerance)
    if method.dtype is not None:  # computes in that precision, fed batches of it
        assert {p.dtype for p in served.network.parameters()} == {method.dtype}
        assert served.preprocess(images).inputs.dtype == method.dtype


def _register(
    registry: ModelRegistry,
    task: Task,
    arch: str,
    state: dict[str, torch.Tensor],
    classes: tuple[str, ...],
    **extra: Any,
) -> ModelVersion:
    """Store ``state`` as a version of model "m" (the score does not matter here)."""
    return registry.register(
        "m",
        task=task,
        arch=arch,
        class_names=classes,
        state_dict=state,
        metrics={"score": 0.5},
        primary_metric="score",
        **extra,
    )


def _quantized_convolutions(module: torch.nn.Module) -> int:
    """How many int8 convolutions a frozen TorchScript graph calls (served at a fixed batch size)."""
    assert isinstance(module, FirstBatchSize)
    module = module.graph
    assert isinstance(module, torch.jit.ScriptModule)
    return sum(node.kind().startswith("quantized::conv2d") for node in module.inlined_graph.nodes())


@pytest.mark.parametrize("method", [Optimization.INT8, Optimization.INT8_ONEDNN])
def test_int8_runs_quantized_kernels_on_the_cpu_whatever_device_is_asked(tmp_path: Path, method: Optimization) -> None:
    if method is Optimization.INT8_ONEDNN and not torch.cpu._is_vnni_supported():
        pytest.skip("int8-onednn is made only on CPUs with VNNI; its refusal is tested below")
    model, _ = build_model(ModelSpec(Task.CLASSIFICATION, "mobilenet_v3_small", class_names=REGISTRY_CLASSES))
    compressed = compress(model.eval(), method, [torch.rand(4, 3, 64, 64) for _ in range(2)])
    registry = ModelRegistry(tmp_path / "registry")
    version = _register(
        registry,
        Task.CLASSIFICATION,
        "mobilenet_v3_small",
        compressed.state_dict(),
        REGISTRY_CLASSES,
        input_size=64,
        optimization=method,
    )
    predictor = build_predictor(version.spec(registry.root), device="meta")
    assert predictor.device == torch.device("cpu")
    assert _quantized_convolutions(predictor.model) == 52  # every convolution of mobilenet_v3_small
    assert torch.backends.quantized.engine == method.quantized_engine


def test_int8_onednn_is_refused_on_a_cpu_without_vnni(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cpu, "_is_vnni_supported", lambda: False)
    model, _ = build_model(ModelSpec(Task.CLASSIFICATION, "vgg6_bn", class_names=REGISTRY_CLASSES))
    with pytest.raises(ConfigError, match="int8-onednn needs a CPU with VNNI") as refused:
        compress(model.eval(), Optimization.INT8_ONEDNN, [torch.rand(2, 3, 32, 32)])
    assert "--method int8" in (refused.value.hint or "")


def test_what_cannot_be_optimised_says_why(tmp_path: Path, folder: str) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    register_classifier(registry, 0.5)
    optimize_version(registry, "cls@1", Optimization.FOLD_BN, folder, calibration_samples=8, timing_frames=16)
    with pytest.raises(ConfigError, match="already fold-bn-optimised"):
        optimize_version(registry, "cls@2", Optimization.INT8, folder)
    with pytest.raises(ConfigError, match="other classes"):
        optimize_version(registry, "cls@1", Optimization.INT8, "fashion-mnist")
    with pytest.raises(ConfigError, match="distill trains on Ray Train") as student:
        optimize_version(registry, "cls@1", Optimization.DISTILL, folder, calibration_samples=8, timing_frames=16)
    assert "--student" in student.value.hint
    detector, _ = build_model(ModelSpec(Task.DETECTION, "ssdlite320_mobilenet_v3_large", class_names=("x",)))
    with pytest.raises(ConfigError, match=r"torch\.fx can trace, and ssdlite320_mobilenet_v3_large is not one"):
        # The whole detector, not its traceable parts: its forward branches on data.
        compress(detector, Optimization.INT8, [[torch.rand(3, 64, 64)]], arch="ssdlite320_mobilenet_v3_large")
    with pytest.raises(ConfigError, match="bf16 casts a whole network"):
        parts = get_architecture("ssdlite320_mobilenet_v3_large").traceable_parts
        compress(detector, Optimization.BF16, [[torch.rand(3, 64, 64)]], parts, "ssdlite320_mobilenet_v3_large")
    with pytest.raises(ConfigError, match="unknown optimization"):
        ModelSpec(Task.CLASSIFICATION, "mobilenet_v3_small", optimization="int4")  # type: ignore[arg-type]


def test_int8_quantizes_every_convolution_of_the_small_image_classifier() -> None:
    torch.manual_seed(0)
    model, _ = build_model(ModelSpec(Task.CLASSIFICATION, "vgg6_bn", class_names=REGISTRY_CLASSES))
    calibration = [torch.rand(8, 3, 32, 32) for _ in range(4)]
    with torch.no_grad():
        expected = model.eval()(calibration[0]).softmax(1)
        served = finish(compress(model, Optimization.INT8, calibration), Optimization.INT8, calibration[0][:1])
        got = served(calibration[0]).softmax(1)
    kinds = {node.kind() for node in served.graph.inlined_graph.nodes()}
    assert not kinds & {"aten::conv2d", "aten::_convolution", "aten::batch_norm"}
    assert _quantized_convolutions(served) == 6
    assert torch.allclose(got, expected, atol=0.05)


def test_an_int8_broadcast_runs_in_float_and_gives_the_quantized_kernels_values() -> None:
    from torch.ao.quantization.quantize_fx import convert_fx

    torch.manual_seed(0)
    model, _ = build_model(ModelSpec(Task.CLASSIFICATION, "mobilenet_v3_small", class_names=REGISTRY_CLASSES))
    calibration = [torch.rand(8, 3, 48, 48) for _ in range(2)]
    prepared = compress(model, Optimization.INT8, calibration)
    kernels = convert_fx(copy.deepcopy(prepared))  # every squeeze-excite scaling by quantized::mul
    served = finish(prepared, Optimization.INT8, calibration[0])
    kinds = [node.kind() for node in served.graph.inlined_graph.nodes()]
    assert "quantized::mul" not in kinds and kinds.count("aten::mul") == 9
    frames = torch.rand(8, 3, 48, 48)
    with torch.no_grad():
        assert torch.equal(served(frames), kernels(frames))


class _BatchSizes(torch.nn.Module):
    """A graph that notes the batch size of each call."""

    def __init__(self, graph: torch.nn.Module) -> None:
        super().__init__()
        self.graph = graph
        self.sizes: list[int] = []

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        self.sizes.append(batch.shape[0])
        return self.graph(batch)  # type: ignore[no-any-return]


def test_an_int8_graph_runs_every_batch_at_the_size_of_its_first() -> None:
    torch.manual_seed(0)
    model, _ = build_model(ModelSpec(Task.CLASSIFICATION, "vgg6_bn", class_names=REGISTRY_CLASSES))
    calibration = [torch.rand(8, 3, 32, 32) for _ in range(2)]
    served = finish(compress(model, Optimization.INT8, calibration), Optimization.INT8, calibration[0][:1])
    assert isinstance(served, FirstBatchSize) and served.size is None
    graph = served.graph = _BatchSizes(served.graph)
    frames = torch.rand(19, 3, 32, 32)
    with torch.no_grad():
        first = served(frames[:8])
        one_by_one = torch.cat([served(frames[i : i + 1]) for i in range(19)])  # padded up to 8
        whole = served(frames)  # in chunks of 8, the last padded
    assert served.size == 8 and set(graph.sizes) == {8}
    assert len(graph.sizes) == 1 + 19 + 3
    # A frame's scores do not depend on what shares its batch.
    assert torch.equal(one_by_one[:8], first) and torch.equal(whole, one_by_one)


@pytest.mark.parametrize("method", [Optimization.FOLD_BN, Optimization.INT8])
def test_a_detector_transforms_its_traceable_parts_and_its_version_serves_what_was_made(
    tmp_path: Path, method: Optimization
) -> None:
    torch.manual_seed(0)
    arch = "fasterrcnn_mobilenet_v2"
    classes = ("a", "b")
    model, _ = build_model(ModelSpec(Task.DETECTION, arch, class_names=classes))
    frames = [torch.rand(3, 120, 160) for _ in range(4)]
    parts = get_architecture(arch).traceable_parts
    compressed = compress(model.eval(), method, [frames[:2], frames[2:]], parts)
    registry = ModelRegistry(tmp_path / "registry")
    version = _register(registry, Task.DETECTION, arch, compressed.state_dict(), classes, optimization=method)
    served = build_predictor(version.spec(registry.root, score_threshold=0.0), device="cpu").network
    kinds = {name: type(module) for name, module in served.named_modules()}
    if method is Optimization.INT8:
        assert _quantized_convolutions(served.backbone) > 0
        # Outside the traceable parts, float.
        assert kinds["rpn.head.cls_logits"] is torch.nn.Conv2d and kinds["roi_heads.box_head.fc6"] is torch.nn.Linear
    assert torch.nn.BatchNorm2d not in kinds.values()
    finished = finish(compressed, method, frames[:1], parts)
    with torch.no_grad():
        outputs = list(zip(served(frames), finished(frames), strict=True))
    assert sum(len(got["boxes"]) for got, _ in outputs) > 0  # something to compare
    for got, made in outputs:
        assert torch.equal(got["boxes"], made["boxes"]) and torch.equal(got["labels"], made["labels"])
    if method is Optimization.INT8:  # the backbone's feature maps of a frame padded to the first batch's 4
        with torch.no_grad():
            alone = served(frames[:1])[0]
        assert torch.equal(alone["boxes"], outputs[0][0]["boxes"])


@pytest.mark.parametrize(
    ("task", "arch", "side"),
    [
        (Task.CLASSIFICATION, "vgg6_bn", 32),
        (Task.CLASSIFICATION, "mobilenet_v3_small", 48),
        (Task.SEGMENTATION, "lraspp_mobilenet_v2", 64),
    ],
)
def test_a_pruned_version_loads_into_its_architecture_at_the_pruned_widths(
    tmp_path: Path, task: Task, arch: str, side: int
) -> None:
    torch.manual_seed(0)
    model, _ = build_model(ModelSpec(task, arch, class_names=REGISTRY_CLASSES))
    full = sum(p.numel() for p in model.parameters())
    pruned = prune_channels(model, 0.5, torch.rand(1, 3, side, side), outputs=len(REGISTRY_CLASSES))
    assert sum(p.numel() for p in pruned.parameters()) < 0.4 * full  # half the channels: about a quarter
    registry = ModelRegistry(tmp_path / "registry")
    version = _register(
        registry, task, arch, pruned.state_dict(), REGISTRY_CLASSES, input_size=side, optimization=Optimization.PRUNE
    )
    served = build_predictor(version.spec(registry.root), device="cpu").network
    batch = torch.rand(3, 3, side, side)
    with torch.no_grad():
        got, made = served(batch), pruned.eval()(batch)
    if task is Task.SEGMENTATION:
        got, made = got["out"], made["out"]
        assert got.shape == (3, len(REGISTRY_CLASSES), side, side)
    assert torch.equal(got, made)
    depthwise = [m for m in served.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    assert all(m.groups == m.in_channels == m.out_channels for m in depthwise)
    assert served.state_dict().keys() == pruned.state_dict().keys()


def test_pruning_says_what_it_cannot_do(tmp_path: Path) -> None:
    model, _ = build_model(ModelSpec(Task.CLASSIFICATION, "vgg6_bn", class_names=REGISTRY_CLASSES))
    with pytest.raises(ConfigError, match="--keep must be between 0 and 1"):
        prune_channels(model, 1.0, torch.rand(1, 3, 32, 32), outputs=len(REGISTRY_CLASSES))
    narrower = {"0.weight": torch.zeros(8, 3)}  # the stored weight of a layer that cannot be resized

    class Scaled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(4, 3))

    with pytest.raises(ConfigError, match="only convolutions, batch norms and linear layers are resized"):
        fit_to_state(torch.nn.Sequential(Scaled()), narrower, "toy")
    registry = ModelRegistry(tmp_path / "registry")
    detector, _ = build_model(ModelSpec(Task.DETECTION, "fasterrcnn_mobilenet_v2", class_names=("a",)))
    _register(registry, Task.DETECTION, "fasterrcnn_mobilenet_v2", detector.state_dict(), ("a",))
    with pytest.raises(ConfigError, match="is a detection model") as refused:
        pruned_start(registry, "m@1", 0.5, tmp_path / "pruned.safetensors")
    assert "int8-onednn" in refused.value.hint
    with pytest.raises(ConfigError, match="prune trains on Ray Train"):
        compress(model, Optimization.PRUNE, [torch.rand(1, 3, 32, 32)])


def test_a_distilled_student_is_compressed_like_a_trained_model(tmp_path: Path, folder: str) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    teacher = register_classifier(registry, 0.9)
    student, _ = build_model(ModelSpec(Task.CLASSIFICATION, "vgg6_bn_slim", class_names=REGISTRY_CLASSES))
    distilled = registry.register(
        "cls",
        task=Task.CLASSIFICATION,
        arch="vgg6_bn_slim",
        class_names=REGISTRY_CLASSES,
        state_dict=student.state_dict(),
        metrics={"accuracy": 0.8},
        primary_metric="accuracy",
        parent=teacher.version,
        input_size=32,
        optimization=Optimization.DISTILL,
    )
    report = optimize_version(
        registry, distilled.ref, Optimization.INT8, folder, calibration_samples=8, timing_frames=16, timing_passes=1
    )
    assert (report.version.parent, report.version.arch) == (distilled.version, "vgg6_bn_slim")
    served = build_predictor(report.version.spec(registry.root), device="cpu").network
    assert _quantized_convolutions(served) == 6
