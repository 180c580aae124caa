"""``vlm optimize``: a compressed registry version of a trained one, measured against it.

The new version's parent is the source version. It records the method, its accuracy and
the source's on the same held-out samples, and the speed-up measured here: both models
through the serving Predictor with one torch thread (a model replica's budget), timed in
alternating passes over the same frames. The promotion gate then decides on accuracy, as
for any candidate.
"""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlm_core.cpu import Host, describe_host, model_process_memory
from vlm_core.errors import ConfigError
from vlm_core.models import Predictor
from vlm_core.models.optimize import ModelInput, compress, prune_channels
from vlm_core.models.spec import Optimization
from vlm_core.models.weights import save_state_dict
from vlm_core.models.zoo import build_model, get_architecture
from vlm_core.registry import ModelRegistry, ModelVersion
from vlm_core.tasks import build_predictor, get_profile
from vlm_core.training.data import SampleSource, load_training_data
from vlm_core.training.evaluate import evaluate, evaluation_overrides


@dataclass(frozen=True)
class OptimizeReport:
    source: ModelVersion
    version: ModelVersion
    method: Optimization
    data: str
    metrics: dict[str, float]
    #: The source's scores, and both models' timing passes.
    comparison: Comparison
    calibration_samples: int
    eval_samples: int
    #: Where the speed-up was measured: it depends on the CPU's int8 and bfloat16 kernels.
    host: Host = field(default_factory=describe_host)

    @property
    def source_metrics(self) -> dict[str, float]:
        return self.comparison.source_metrics

    @property
    def source_fps(self) -> tuple[float, ...]:
        return self.comparison.source_fps

    @property
    def fps(self) -> tuple[float, ...]:
        return self.comparison.fps

    @property
    def speedup(self) -> float:
        return self.comparison.speedup

    @property
    def infer_speedup(self) -> float:
        return self.comparison.infer_speedup

    def to_json(self) -> dict[str, Any]:
        primary = self.source.primary_metric or get_profile(self.source.task).primary_metric
        return {
            "source": self.source.ref,
            "version": self.version.ref,
            "method": self.method.value,
            "data": self.data,
            "primary_metric": primary,
            "source_metrics": self.source_metrics,
            "metrics": self.metrics,
            "drop_points": round(100 * (self.source_metrics[primary] - self.metrics[primary]), 3),
            "source_fps": list(self.source_fps),
            "fps": list(self.fps),
            "speedup": round(self.speedup, 3),
            "source_infer_fps": list(self.comparison.source_infer_fps),
            "infer_fps": list(self.comparison.infer_fps),
            "infer_speedup": round(self.infer_speedup, 3),
            "calibration_samples": self.calibration_samples,
            "eval_samples": self.eval_samples,
            "host": self.host.to_json(),
        }


def optimize_version(
    registry: ModelRegistry,
    ref: str,
    method: Optimization,
    data_uri: str,
    *,
    calibration_samples: int = 256,
    limit: int | None = None,
    batch_size: int = 16,
    timing_frames: int = 512,
    timing_passes: int = 3,
    progress: Callable[[str], None] = lambda _message: None,
) -> OptimizeReport:
    """Make a ``method`` version of ``ref``: calibrated on the held-out training split of
    ``data_uri`` (its validation split), scored on its test split against the source."""
    if calibration_samples < 1 or timing_passes < 1 or timing_frames < batch_size:
        raise ConfigError(
            "calibration samples and timing passes must be at least 1, and timing frames at least one batch"
        )
    source = _float_source(registry, ref)
    data = load_training_data(data_uri, source.task)
    if tuple(data.class_names) != tuple(source.class_names):
        raise ConfigError(f"{data_uri} has other classes than {source.ref}", hint="give the data it was trained on")
    torch.set_num_threads(1)
    spec = source.spec(registry.root, **evaluation_overrides(source.task))
    reference = build_predictor(spec, device="cpu")
    count = min(calibration_samples, len(data.validation))
    progress(f"calibrating {method.value} on {count} held-out training samples of {data_uri}")
    calibration = _model_inputs(reference, [data.validation[i].image for i in range(count)], batch_size)
    parts = get_architecture(source.arch).traceable_parts
    compressed = compress(reference.network, method, calibration, parts, source.arch)
    with tempfile.TemporaryDirectory(prefix="vlm-optimize-") as tmp:
        weights = Path(tmp) / "model.safetensors"
        save_state_dict(compressed.state_dict(), weights)
        # Loaded the way a model replica loads it, so what is measured is what serves.
        optimized = build_predictor(spec.with_(weights=str(weights), optimization=method), device="cpu")
        progress(f"scoring {source.ref} and its {method.value} version on the held-out split")
        optimized_eval = evaluate(optimized, data.test, batch_size=batch_size, limit=limit)
        comparison = compare_to_source(
            reference,
            optimized,
            data.test,
            limit=limit,
            batch_size=batch_size,
            timing_frames=timing_frames,
            timing_passes=timing_passes,
            progress=progress,
        )
        primary = source.primary_metric or get_profile(source.task).primary_metric
        version = registry.register(
            source.name,
            task=source.task,
            arch=source.arch,
            class_names=source.class_names,
            state_dict=compressed.state_dict(),
            metrics=comparison.version_metrics(optimized_eval.metrics),
            primary_metric=primary,
            dataset_hash=source.dataset_hash,
            parent=source.version,
            input_size=source.input_size,
            optimization=method,
        )
    return OptimizeReport(
        source,
        version,
        method,
        data_uri,
        optimized_eval.metrics,
        comparison,
        count,
        optimized_eval.samples,
    )


def pruned_start(registry: ModelRegistry, ref: str, keep: float, out: Path) -> ModelVersion:
    """Prune ``ref``'s model to ``keep`` of each layer's channels and save its state to
    ``out``: where a prune fine-tune starts (the trainer runs it, with ``ref`` as the
    teacher). Returns the source version."""
    source = _float_source(registry, ref)
    if not get_profile(source.task).distills:
        raise ConfigError(
            f"prune fine-tunes against the source's class scores, and {source.ref} is a {source.task.value} model",
            hint="prune classifiers and segmenters; int8-onednn compresses detectors",
        )
    arch = get_architecture(source.arch)
    model, _ = build_model(source.spec(registry.root))
    outputs = len(source.class_names) + (1 if arch.implicit_background else 0)
    example = arch.example_input(source.input_size or 224)
    assert isinstance(example, torch.Tensor)  # classifiers and segmenters take one batch
    out.parent.mkdir(parents=True, exist_ok=True)
    save_state_dict(prune_channels(model, keep, example, outputs).state_dict(), out)
    return source


def _float_source(registry: ModelRegistry, ref: str) -> ModelVersion:
    """``ref``, which must be a float model as its architecture builds it (as trained, or a
    distilled student)."""
    source = registry.resolve(ref)
    registry.verify(source)
    if source.optimization is not None and source.optimization.restructures:
        raise ConfigError(
            f"{source.ref} is already {source.optimization.value}-optimised",
            hint=f"optimise the version it was made from, {source.name}@{source.parent}",
        )
    return source


def _model_inputs(predictor: Predictor, images: Sequence[np.ndarray], batch_size: int) -> Iterator[ModelInput]:
    """Batches as the predictor's network takes them: a tensor, or a detector's image list."""
    for start in range(0, len(images), batch_size):
        inputs = predictor.preprocess(images[start : start + batch_size]).inputs
        yield inputs if isinstance(inputs, torch.Tensor) else list(inputs)


@dataclass(frozen=True)
class Comparison:
    """A derived version against its source: the source's metrics on the same held-out
    samples, and both models' frames per second, pass by pass: of ``Predictor.predict``,
    as a replica runs it, and of ``Predictor.infer`` alone (the forward pass and the
    post-processing, without the preprocessing both models share)."""

    source_metrics: dict[str, float]
    source_fps: tuple[float, ...]
    fps: tuple[float, ...]
    source_infer_fps: tuple[float, ...]
    infer_fps: tuple[float, ...]

    @property
    def speedup(self) -> float:
        return statistics.median(self.fps) / statistics.median(self.source_fps)

    @property
    def infer_speedup(self) -> float:
        return statistics.median(self.infer_fps) / statistics.median(self.source_infer_fps)

    def version_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        """What the derived version records: its own metrics, the source's, and the speed-up."""
        return {
            **metrics,
            **{f"source_{k}": v for k, v in self.source_metrics.items()},
            "fps": statistics.median(self.fps),
            "source_fps": statistics.median(self.source_fps),
            "speedup": self.speedup,
            "infer_speedup": self.infer_speedup,
        }


def compare_to_source(
    source: Predictor,
    derived: Predictor,
    samples: SampleSource,
    *,
    limit: int | None = None,
    batch_size: int = 16,
    timing_frames: int = 512,
    timing_passes: int = 3,
    progress: Callable[[str], None] = lambda _message: None,
) -> Comparison:
    """Score ``source`` on ``samples`` and time both predictors with one torch thread (a
    model replica's budget), in alternating passes over the same frames."""
    source_eval = evaluate(source, samples, batch_size=batch_size, limit=limit)
    images = [samples[i % len(samples)].image for i in range(timing_frames)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model_process_memory()
    try:
        for predictor in (source, derived):
            predictor.warmup(batch_size, images[0].shape[:2])
        fps: dict[Predictor, list[float]] = {source: [], derived: []}
        infer_fps: dict[Predictor, list[float]] = {source: [], derived: []}
        for done in range(timing_passes):
            for predictor in (source, derived):
                whole, infer = predictor.throughputs(images, batch_size)
                fps[predictor].append(round(whole, 2))
                infer_fps[predictor].append(round(infer, 2))
            progress(
                f"timing pass {done + 1}/{timing_passes}: source {fps[source][-1]:.0f} fps, "
                f"new {fps[derived][-1]:.0f} fps"
            )
    finally:
        torch.set_num_threads(threads)
    return Comparison(
        source_eval.metrics,
        tuple(fps[source]),
        tuple(fps[derived]),
        tuple(infer_fps[source]),
        tuple(infer_fps[derived]),
    )
