"""The stream processor's replica runs no model, so it does not load torch."""

from __future__ import annotations

from tests.conftest import torch_loaded_by


def test_the_processor_and_the_ingest_worker_import_without_torch() -> None:
    assert torch_loaded_by("services.inference.processor", "services.ingest.worker", "vlm_core.models") == []
