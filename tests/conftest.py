"""Shared fixtures. Integration fixtures use the real local stack (`vlm local up`)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from vlm_core.config import LocalSettings, ray_environment
from vlm_core.registry import ModelRegistry, ModelVersion

os.environ.update(ray_environment())


@pytest.fixture(scope="session")
def settings() -> LocalSettings:
    return LocalSettings.from_env()


@contextmanager
def running(name: str, settings: LocalSettings) -> Iterator[None]:
    """A real local service while the block runs. One the test run did not start already
    (``make test`` starts the whole stack) is started here and stopped after, by its PID:
    a bare ``pytest`` leaves nothing running."""
    from services.localstack import LocalStack

    service = LocalStack(settings).services[name]
    started = not service.status().running
    if started:
        service.start()
    try:
        yield
    finally:
        if started:
            service.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(settings: LocalSettings) -> Iterator[str]:
    with running("kafka", settings):
        yield settings.bootstrap_servers


@pytest.fixture(scope="session")
def ray_address(settings: LocalSettings) -> Iterator[str]:
    with running("ray", settings):
        yield settings.ray_address


@pytest.fixture
def topic_name(kafka_bootstrap: str) -> Iterator[str]:
    """A fresh topic name, deleted after the test."""
    from services.kafka_io import delete_topics

    name = f"test.{uuid.uuid4().hex[:10]}"
    yield name
    delete_topics(kafka_bootstrap, [name])


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def random_image(rng: np.random.Generator, height: int = 48, width: int = 64) -> np.ndarray:
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


REGISTRY_CLASSES = ("a", "b", "c")


def register_classifier(
    registry: ModelRegistry,
    accuracy: float,
    *,
    weight_classes: tuple[str, ...] = REGISTRY_CLASSES,
    parent: int | None = None,
) -> ModelVersion:
    """Register a random-init mobilenet_v3_small as model "cls" with the given accuracy.
    ``weight_classes`` different from REGISTRY_CLASSES makes weights that cannot load."""
    from vlm_core.contracts.task import Task
    from vlm_core.models import build_model
    from vlm_core.models.spec import ModelSpec

    model, _ = build_model(ModelSpec(Task.CLASSIFICATION, "mobilenet_v3_small", class_names=weight_classes))
    return registry.register(
        "cls",
        task=Task.CLASSIFICATION,
        arch="mobilenet_v3_small",
        class_names=REGISTRY_CLASSES,
        state_dict=model.state_dict(),
        metrics={"accuracy": accuracy, "top5": 1.0},
        primary_metric="accuracy",
        dataset_hash="sha256:abc",
        parent=parent,
    )


def write_colour_folder(root: Path, per_class: int = 24) -> str:
    """An image folder of REGISTRY_CLASSES (each class its own grey level, with noise): data
    for calibrating and scoring the registry's "cls" models."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    for k, name in enumerate(REGISTRY_CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = np.clip(rng.normal(60 + 70 * k, 25, (40, 40, 3)), 0, 255).astype(np.uint8)
            cv2.imwrite(str(root / name / f"{i}.png"), image)
    return str(root)


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub cache, and no downloads: the offline machine of the weights tests."""
    import torch

    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))

    def no_network(*_args: object, **_kwargs: object) -> None:
        raise OSError("no network in this test")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return tmp_path / "hub"


def torch_loaded_by(*modules: str) -> list[str]:
    """The torch and torchvision modules that importing ``modules`` loads, in a fresh
    interpreter (torch holds about 500 MB of resident memory in every process that loads it)."""
    code = (
        f"import sys\nimport {', '.join(modules)}\n"
        "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision'))[:5]))"
    )
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=root)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return [name for name in proc.stdout.strip().split(",") if name]
