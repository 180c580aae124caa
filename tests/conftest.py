"""Shared fixtures. Integration fixtures use the real local stack (`vlm local up`)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import numpy as np
import pytest

from vlm_core.config import LocalSettings, ray_environment

os.environ.update(ray_environment())


@pytest.fixture(scope="session")
def settings() -> LocalSettings:
    return LocalSettings.from_env()


@pytest.fixture(scope="session")
def kafka_bootstrap(settings: LocalSettings) -> str:
    """The real broker. Started (idempotently) if the test run did not start it already."""
    from vlm_core.local import KafkaService

    service = KafkaService(settings)
    if not service.status().running:
        service.start()
    return settings.bootstrap_servers


@pytest.fixture(scope="session")
def ray_address(settings: LocalSettings) -> str:
    from vlm_core.local import RayService

    service = RayService(settings)
    if not service.status().running:
        service.start()
    return settings.ray_address


@pytest.fixture
def topic_name(kafka_bootstrap: str) -> Iterator[str]:
    """A fresh topic name, deleted after the test."""
    from vlm_core.kafka_io import delete_topics

    name = f"test.{uuid.uuid4().hex[:10]}"
    yield name
    delete_topics(kafka_bootstrap, [name])


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def random_image(rng: np.random.Generator, height: int = 48, width: int = 64) -> np.ndarray:
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
