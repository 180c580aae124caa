"""Ray Train on the real local Ray: the promotion gate, recovery from a killed worker,
distillation and a pruned fine-tune."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from services.trainer.job import TrainOutcome, TrainRequest, run_training
from vlm_core.contracts.task import Task
from vlm_core.datasets import load_fashion_mnist
from vlm_core.models.spec import Optimization
from vlm_core.registry import ModelRegistry, ModelStatus
from vlm_core.tasks import build_predictor

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real Fashion-MNIST test items as an image-folder tree, 100 per class."""
    root = tmp_path_factory.mktemp("fmnist-folder")
    data = load_fashion_mnist("test")
    for class_id, name in enumerate(data.class_names):
        folder = root / name.replace("/", "-")
        folder.mkdir()
        for n, index in enumerate(np.flatnonzero(data.labels == class_id)[:100]):
            cv2.imwrite(str(folder / f"{n}.png"), data.images[index])
    return root


def _train(
    ray_address: str, tmp_path: Path, events: list[dict[str, Any]] | None = None, **options: Any
) -> TrainOutcome:
    defaults: dict[str, Any] = {
        "task": Task.CLASSIFICATION,
        "arch": "mobilenet_v2",  # starts from ImageNet (init auto): a few steps suffice
        "workers": 2,
        "cpus_per_worker": 0.5,
        "batch_size": 32,
        "input_size": 64,
        "lr": 2e-3,
        "validation_fraction": 0.25,
    }
    return run_training(
        TrainRequest(**{**defaults, **options}),
        ray_address=ray_address,
        registry_dir=tmp_path / "registry",
        storage=tmp_path / "train",
        on_progress=(events.append if events is not None else lambda event: None),
    )


@pytest.fixture(scope="module")
def trained(
    ray_address: str, image_folder: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[TrainOutcome, Path]:
    """A model trained and promoted once, with its registry's root folder: the gate's
    incumbent, and the teacher that is distilled and pruned."""
    root = tmp_path_factory.mktemp("trained")
    return _train(ray_address, root, data=str(image_folder), epochs=4, name="gate", promote=True), root


def test_gate_refuses_a_candidate_trained_on_shuffled_labels(
    ray_address: str, image_folder: Path, trained: tuple[TrainOutcome, Path]
) -> None:
    good, tmp_path = trained
    assert good.decision is not None and good.decision.promoted, good.decision
    assert good.version.status is ModelStatus.PRODUCTION
    assert good.metrics["accuracy"] > 0.4, good.metrics
    assert Path(good.artifacts["curves.png"]).is_file() and Path(good.artifacts["confusion.png"]).is_file()

    bad = _train(
        ray_address, tmp_path, data=str(image_folder), epochs=3, name="gate", promote=True, shuffle_labels=True
    )
    registry = ModelRegistry(tmp_path / "registry")
    assert bad.decision is not None and not bad.decision.promoted
    assert bad.decision.candidate_score is not None and bad.decision.production_score is not None
    assert bad.decision.candidate_score < bad.decision.production_score
    stored = registry.get("gate", bad.version.version)
    assert stored.status is ModelStatus.CANDIDATE and stored.status_reason.startswith("refused: accuracy")
    assert stored.parent == good.version.version
    production = registry.production("gate")
    assert production is not None and production.version == good.version.version


def test_killed_worker_resumes_from_the_last_checkpoint(ray_address: str, image_folder: Path, tmp_path: Path) -> None:
    events: list[dict[str, Any]] = []
    outcome: dict[str, Any] = {}
    epochs = 5

    def train() -> None:
        try:
            outcome["result"] = _train(
                ray_address, tmp_path, events, data=str(image_folder), epochs=epochs, name="fault"
            )
        except BaseException as exc:
            outcome["error"] = exc

    runner = threading.Thread(target=train)
    runner.start()
    # Ray Train registers a reported checkpoint when its controller next polls the workers;
    # by the end of epoch 2 the checkpoint of epoch 1 is surely registered.
    deadline = time.monotonic() + 180
    while sum(e.get("event") == "epoch" for e in events) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sum(e.get("event") == "epoch" for e in events) >= 2, "two epochs did not finish in time"
    workers = {e["rank"]: e["pid"] for e in events if e.get("event") == "worker"}
    assert sorted(workers) == [0, 1]
    os.kill(workers[1], signal.SIGKILL)  # a Ray Train worker process, by its PID
    killed_after = max(int(e["epoch"]) for e in events if e.get("event") == "epoch")
    runner.join(timeout=300)
    assert "error" not in outcome, outcome.get("error")
    result: TrainOutcome = outcome["result"]
    assert killed_after < epochs, "the worker must die before training ends"
    resumed = [e for e in events if e.get("event") == "resumed"]
    assert resumed, [e for e in events if e.get("event") != "step"]
    assert 1 <= resumed[0]["epoch"] <= killed_after + 1
    assert [int(h["epoch"]) for h in result.history] == list(range(1, epochs + 1))
    restarted = [e["pid"] for e in events if e.get("event") == "worker" and e["rank"] == 1]
    assert len(restarted) >= 2 and restarted[-1] != workers[1], "a new worker process replaced the killed one"
    assert result.metrics["accuracy"] > 0.4


def test_a_student_and_a_pruned_copy_learn_from_their_teacher_and_are_registered_as_its_children(
    ray_address: str, image_folder: Path, trained: tuple[TrainOutcome, Path]
) -> None:
    teacher, tmp_path = trained
    registry = ModelRegistry(tmp_path / "registry")
    # Weight 1: the labels play no part, so what the student gets right it learnt from the teacher.
    student = _train(
        ray_address,
        tmp_path,
        data=str(image_folder),
        arch="vgg6_bn_slim",
        init="none",
        input_size=32,  # the teacher's batches are resized to its 64 px
        epochs=6,
        lr=3e-3,
        teacher=teacher.version.spec(registry.root).to_dict(),
        distill_weight=1.0,
    )
    version = registry.get("gate", student.version.version)
    assert (version.parent, version.optimization, version.arch) == (
        teacher.version.version,
        Optimization.DISTILL,
        "vgg6_bn_slim",
    )
    assert student.metrics["accuracy"] > 0.3, student.metrics  # chance is 0.1
    # The teacher is scored on the very samples the student was.
    assert version.metrics["source_accuracy"] == pytest.approx(teacher.metrics["accuracy"])
    assert version.metrics["speedup"] == pytest.approx(version.metrics["fps"] / version.metrics["source_fps"])
    assert len(student.comparison.fps) == len(student.comparison.source_fps) == 3  # the timing passes
    assert version.metrics["speedup"] > 1.0, version.metrics  # a quarter of vgg6_bn against mobilenet_v2 at 64 px

    # Pruning, as a user runs it: the CLI prunes, fine-tunes on the same Ray cluster, registers.
    report = tmp_path / "prune.json"
    cli = [
        sys.executable, "-m", "services.cli", "optimize", "--model", teacher.version.ref, "--method", "prune",
        "--keep", "0.5", "--epochs", "8", "--workers", "2", "--cpus-per-worker", "0.5",
        "--calibration", str(image_folder), "--json", str(report),
    ]  # fmt: skip
    env = {**os.environ, "VLM_REGISTRY_DIR": str(registry.root), "RAY_ADDRESS": ray_address, "COLUMNS": "200"}
    proc = subprocess.run(cli, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(report.read_text())
    version = registry.get("gate", int(doc["version"].split("@")[1]))
    assert (version.parent, version.optimization) == (teacher.version.version, Optimization.PRUNE)
    assert doc["source"] == teacher.version.ref and len(doc["fps"]) == len(doc["source_fps"]) == 3
    served = build_predictor(version.spec(registry.root), device="cpu").network
    source = build_predictor(teacher.version.spec(registry.root), device="cpu").network
    assert sum(p.numel() for p in served.parameters()) < 0.4 * sum(p.numel() for p in source.parameters())
    assert version.metrics["accuracy"] > 0.3, version.metrics
    assert version.metrics["speedup"] > 1.0, version.metrics
