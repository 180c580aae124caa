"""The live view runs no model: its accuracy scoring loads no torch."""

from __future__ import annotations

from tests.conftest import torch_loaded_by


def test_the_view_imports_without_torch() -> None:
    assert torch_loaded_by("services.view", "vlm_core.stream.accuracy") == []
