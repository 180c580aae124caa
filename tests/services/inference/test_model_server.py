import logging
import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from services.inference.model_server import place_forward_thread
from vlm_core.cpu import MODEL_CPUS_ENV, available_cpus


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="placement needs two CPUs to choose from")
def test_the_forward_thread_moves_onto_the_nodes_model_cpus_and_serves_anyway_where_it_cannot(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    everywhere = frozenset(os.sched_getaffinity(0))
    model = max(everywhere)

    def placed() -> tuple[frozenset[int], frozenset[int]]:
        # The replica's infer pool as ModelServer builds it: placed, then asked where it runs.
        with ThreadPoolExecutor(1, initializer=place_forward_thread) as pool:
            forward_cpus = pool.submit(available_cpus).result()
            seen = pool.submit(lambda: frozenset(os.sched_getaffinity(0))).result()
        return forward_cpus, seen

    monkeypatch.setenv(MODEL_CPUS_ENV, str(model))
    assert placed() == ({model}, {model})
    assert os.sched_getaffinity(0) == everywhere  # the thread alone moved
    monkeypatch.delenv(MODEL_CPUS_ENV)
    assert placed() == (everywhere, everywhere)
    monkeypatch.setenv(MODEL_CPUS_ENV, "4096")  # no such CPU here
    with caplog.at_level(logging.WARNING, logger="ray.serve"):
        assert placed() == (everywhere, everywhere)
    assert "forward passes stay on CPUs" in caplog.text
