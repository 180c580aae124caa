from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def pipeline_env(kafka_bootstrap: str, ray_address: str) -> tuple[str, str]:
    return ray_address, kafka_bootstrap
