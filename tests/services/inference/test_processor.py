"""The stream processor's replica: it loads no torch, and asks the models cheaply whether they answered."""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

import pytest

from tests.conftest import torch_loaded_by


def test_the_processor_and_the_ingest_worker_import_without_torch() -> None:
    assert torch_loaded_by("services.inference.processor", "services.ingest.worker", "vlm_core.models") == []


class _FakeRef:
    def __init__(self, done: Future[Any]) -> None:
        self.done = done

    def future(self) -> Future[Any]:
        return self.done


class _FakeResponse:
    """A DeploymentResponse: not at a replica until ``assigned``, answered when ``done`` is."""

    def __init__(self) -> None:
        self.assigned = False
        self.done: Future[Any] = Future()
        self.store_reads = 0

    def _to_object_ref_sync(self, _timeout_s: float | None = None) -> _FakeRef:
        if not self.assigned:
            raise TimeoutError("Timed out resolving to ObjectRef.")
        return _FakeRef(self.done)

    def result(self, timeout_s: float | None = None) -> Any:
        self.store_reads += 1
        return self.done.result(timeout=timeout_s)


def test_asking_whether_a_model_answered_does_not_read_the_object_store() -> None:
    from services.inference.processor import _Response

    response = _FakeResponse()
    request = _Response(response)
    for assigned in (False, True):
        response.assigned = assigned
        with pytest.raises(TimeoutError):
            request.result(timeout=0)
    assert response.store_reads == 0
    response.done.set_result(["outputs"])
    assert request.result(timeout=0) == request.result() == ["outputs"]
    assert response.store_reads == 1  # read once, then kept
