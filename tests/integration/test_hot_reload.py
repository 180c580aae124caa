"""Promote a new model version mid-stream: the running pipeline switches without a restart."""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REGISTRY_CLASSES, register_classifier, write_colour_folder
from tests.integration.pipeline import (
    PipelineTopics,
    produce_frames,
    produce_in_background,
    read_results,
    running_pipeline,
)
from vlm_core.models import ModelSpec, Task, build_model
from vlm_core.models.optimize import compress
from vlm_core.models.spec import Optimization
from vlm_core.models.zoo import get_architecture
from vlm_core.registry import ModelRegistry
from vlm_core.training.optimize import optimize_version

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("hosting", ["deployments", "processor"])
def test_promotion_mid_stream_switches_once_without_restart(
    pipeline_env: tuple[str, str], tmp_path: Path, hosting: str
) -> None:
    from services.inference.deploy import model_replica_info, processor_stats

    ray_address, bootstrap = pipeline_env
    registry = ModelRegistry(tmp_path / "registry")
    register_classifier(registry, 0.5)
    register_classifier(registry, 0.9)
    register_classifier(
        registry, 0.95, weight_classes=("a", "b", "c", "d")
    )  # weights that do not fit: must fail to load
    assert registry.promote("cls", 1).promoted
    topics = PipelineTopics.fresh()
    model = {
        "spec": {
            "task": "classification",
            "arch": "mobilenet_v3_small",
            "class_names": list(REGISTRY_CLASSES),
            "input_size": 64,
        },
        "registry_name": "cls",
        "registry_poll_s": 0.5,
        "deployment": {"num_cpus": 0.25, "max_batch_size": 16},
    }
    per_camera = 200
    with running_pipeline(
        ray_address,
        bootstrap,
        topics,
        models={"classification": model},
        registry_dir=str(registry.root),
        processor={"model_hosting": hosting},
    ) as app:

        def classifier_info() -> dict[str, Any]:  # the Classifier replica's, or the processor's model's
            return model_replica_info(app, Task.CLASSIFICATION)

        before = classifier_info()
        processor_before = processor_stats(app).actor_name
        feeder = produce_in_background(bootstrap, topics.frames, ["left", "right"], per_camera, fps=40)
        deadline = time.monotonic() + 60
        while processor_stats(app).results_produced < 100 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert registry.promote("cls", 2).promoted
        feeder.join(60)
        results = read_results(bootstrap, topics.results, 2 * per_camera, timeout_s=120)
        after = classifier_info()
        # A bad version: the gate is skipped on purpose, the replica must keep serving v2.
        assert registry.promote("cls", 3, force=True).promoted
        deadline = time.monotonic() + 30
        while not after["last_error"] and time.monotonic() < deadline:
            time.sleep(0.5)
            after = classifier_info()
        # A compressed version swaps in like any other: int8 of v2 (oneDNN's where this CPU
        # allows it), through the gate (its random weights score near chance, so the test
        # accepts any accuracy loss).
        import torch

        int8 = optimize_version(
            registry,
            "cls@2",
            Optimization.INT8_ONEDNN if torch.cpu._is_vnni_supported() else Optimization.INT8,
            write_colour_folder(tmp_path / "data"),
            calibration_samples=16,
            timing_frames=16,
            timing_passes=1,
        ).version
        assert registry.promote("cls", int8.version, margin=-1.0).promoted
        deadline = time.monotonic() + 30
        swapped = classifier_info()
        while swapped["version"] != str(int8.version) and time.monotonic() < deadline:
            time.sleep(0.5)
            swapped = classifier_info()
        produce_frames(bootstrap, topics.frames, ["int8"], 20)
        later = read_results(bootstrap, topics.results, 2 * per_camera + 20, timeout_s=120)
        processor_after, processor_pid = processor_stats(app).actor_name, processor_stats(app).pid
    assert swapped["version"] == str(int8.version) and swapped["last_error"] == "", swapped
    assert swapped["pid"] == before["pid"], "the int8 version must load in the same replica"
    int8_results = [r for r in later if r.camera_id == "int8"]
    assert sorted(r.seq for r in int8_results) == list(range(20))
    assert {r.classification.model.version for r in int8_results if r.classification} == {str(int8.version)}
    assert before["version"] == "1" and after["version"] == "2"
    assert "do not fit" in after["last_error"]
    assert after["pid"] == before["pid"], "the model replica must not restart"
    assert processor_after == processor_before, "the processor must not restart"
    assert (before["pid"] == processor_pid) is (hosting == "processor")
    seen = {(r.camera_id, r.seq) for r in results}
    assert seen == {(c, s) for c in ("left", "right") for s in range(per_camera)}
    versions: dict[str, list[str]] = defaultdict(list)
    for r in sorted(results, key=lambda r: (r.camera_id, r.seq)):
        assert r.classification is not None
        versions[r.camera_id].append(r.classification.model.version)
    for camera, sequence in versions.items():
        changes = [i for i in range(1, len(sequence)) if sequence[i] != sequence[i - 1]]
        assert sequence[0] == "1" and sequence[-1] == "2", camera
        assert len(changes) == 1, f"{camera}: version changed {len(changes)} times"


def test_an_int8_detector_version_swaps_in_the_same_replica(pipeline_env: tuple[str, str], tmp_path: Path) -> None:
    """The detector's int8 version (its backbone quantized, the rest float) loads through the
    registry like any other and serves the next frames."""
    import torch
    from ray import serve

    ray_address, bootstrap = pipeline_env
    torch.manual_seed(0)
    arch, classes = "fasterrcnn_mobilenet_v2", ("a", "b")
    model, _ = build_model(ModelSpec(Task.DETECTION, arch, class_names=classes))
    calibration = [[torch.rand(3, 120, 160) for _ in range(2)] for _ in range(2)]
    parts = get_architecture(arch).traceable_parts
    registry = ModelRegistry(tmp_path / "registry")
    versions = {
        method: registry.register(
            "det",
            task=Task.DETECTION,
            arch=arch,
            class_names=classes,
            state_dict=(compress(model, method, calibration, parts) if method else model).state_dict(),
            metrics={"map50": 0.5},
            primary_metric="map50",
            parent=1 if method else None,
            optimization=method,
        )
        for method in (None, Optimization.INT8)
    }
    assert registry.promote("det", 1).promoted
    topics = PipelineTopics.fresh()
    detector = {
        "spec": {"task": "detection", "arch": arch, "class_names": list(classes), "score_threshold": 0.0},
        "registry_name": "det",
        "registry_poll_s": 0.5,
        "deployment": {"num_cpus": 0.25, "max_batch_size": 8},
    }
    with running_pipeline(
        ray_address,
        bootstrap,
        topics,
        models={"detection": detector},
        cameras={"default": {"tasks": ["detection"]}},
        registry_dir=str(registry.root),
    ) as app:
        handle = serve.get_deployment_handle("Detector", app_name=app)
        before = handle.info.remote().result(timeout_s=30)
        produce_frames(bootstrap, topics.frames, ["float"], 8)
        first = read_results(bootstrap, topics.results, 8, timeout_s=120)
        assert registry.promote("det", versions[Optimization.INT8].version).promoted  # same map50: the gate passes
        deadline = time.monotonic() + 60
        swapped = handle.info.remote().result(timeout_s=30)
        while swapped["version"] != "2" and time.monotonic() < deadline:
            time.sleep(0.5)
            swapped = handle.info.remote().result(timeout_s=30)
        produce_frames(bootstrap, topics.frames, ["int8"], 8)
        later = read_results(bootstrap, topics.results, 16, timeout_s=120)
    assert before["version"] == "1" and swapped["version"] == "2" and swapped["last_error"] == "", swapped
    assert swapped["pid"] == before["pid"], "the int8 version must load in the same replica"
    assert {r.detection.model.version for r in first if r.detection is not None} == {"1"}
    int8 = [r for r in later if r.camera_id == "int8"]
    assert sorted(r.seq for r in int8) == list(range(8))
    assert [r.detection.model.version if r.detection else None for r in int8] == ["2"] * 8
