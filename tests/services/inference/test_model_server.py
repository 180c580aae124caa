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


def test_a_model_held_in_process_prepares_and_runs_batches_and_fails_one_with_its_frames_error() -> None:
    # model_hosting "processor": the processor calls ModelServer.submit, no Serve between.
    from dataclasses import replace

    import numpy as np

    from services.chaos import CHAOS_MODEL
    from services.inference.model_server import ModelServer
    from vlm_core.contracts.frame import Frame
    from vlm_core.errors import FrameError
    from vlm_core.models import ModelSpec
    from vlm_core.pipeline import DeploymentSettings

    server = ModelServer(
        ModelSpec.from_dict(CHAOS_MODEL["spec"]), DeploymentSettings(warmup_s=0, max_batch_size=4), request_frames=4
    )
    rng = np.random.default_rng(0)
    frames = [
        Frame.from_image(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), camera_id="c", seq=i) for i in range(4)
    ]
    pending = [server.submit([f.decode() for f in frames]), server.submit(frames)]  # pixels, then encoded
    decoded, encoded = (p.result(timeout=120) for p in pending)
    assert len(decoded) == len(encoded) == 4
    assert [o.to_json() for o in decoded] == [o.to_json() for o in encoded]  # the same frames either way
    wrong_size = replace(frames[0], width=frames[0].width * 2)
    with pytest.raises(FrameError, match="headers say"):
        server.submit([frames[1], wrong_size]).result(timeout=120)
    assert len(server.submit(frames[:2]).result(timeout=120)) == 2  # and it serves on
    assert set(server.stages()) >= {"preprocess", "infer", "decode"}
