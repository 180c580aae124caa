import logging
import os
import threading
from types import SimpleNamespace

import pytest

from services.inference.model_server import ModelServer
from vlm_core.cpu import MODEL_CPUS_ENV


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="placement needs two CPUs to choose from")
def test_the_forward_thread_moves_onto_the_nodes_model_cpus_and_serves_anyway_where_it_cannot(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    everywhere = frozenset(os.sched_getaffinity(0))
    model = max(everywhere)

    def placed() -> tuple[frozenset[int], frozenset[int]]:
        server = SimpleNamespace()
        seen: list[frozenset[int]] = []

        def infer_thread() -> None:
            ModelServer._place_forward(server)  # type: ignore[arg-type]
            seen.append(frozenset(os.sched_getaffinity(0)))

        thread = threading.Thread(target=infer_thread)
        thread.start()
        thread.join()
        return server.forward_cpus, seen[0]

    monkeypatch.setenv(MODEL_CPUS_ENV, str(model))
    assert placed() == ({model}, {model})
    assert os.sched_getaffinity(0) == everywhere  # the thread alone moved
    monkeypatch.delenv(MODEL_CPUS_ENV)
    assert placed() == (everywhere, everywhere)
    monkeypatch.setenv(MODEL_CPUS_ENV, "4096")  # no such CPU here
    with caplog.at_level(logging.WARNING, logger="ray.serve"):
        assert placed() == (everywhere, everywhere)
    assert "forward passes stay on CPUs" in caplog.text
