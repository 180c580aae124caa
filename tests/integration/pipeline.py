"""Helpers for pipeline tests: deploy a private Serve app on private topics, feed it, read it."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from services import kafka_io
from services.chaos import CHAOS_MODEL
from services.inference import deploy
from vlm_core.config import Topics
from vlm_core.contracts.frame import Frame
from vlm_core.contracts.result import Result
from vlm_core.contracts.task import Task
from vlm_core.pipeline import model_pipeline_args

#: The fault scenarios' small classifier, under the name the tests look for.
FAST_CLASSIFIER = {**CHAOS_MODEL, "spec": {**CHAOS_MODEL["spec"], "name": "test-classifier"}}


@dataclass
class PipelineTopics:
    frames: str
    results: str
    dlq: str

    @classmethod
    def fresh(cls) -> PipelineTopics:
        tag = uuid.uuid4().hex[:8]
        return cls(f"t.{tag}.frames", f"t.{tag}.results", f"t.{tag}.dlq")

    def names(self) -> list[str]:
        return [self.frames, self.results, self.dlq]


def pipeline_args(bootstrap: str, topics: PipelineTopics, **overrides: Any) -> dict[str, Any]:
    processor = {"group_id": f"g-{uuid.uuid4().hex[:8]}", "batch_size": 8, "poll_timeout_ms": 50, "num_cpus": 0.25}
    return model_pipeline_args(
        bootstrap,
        Topics(frames=topics.frames, results=topics.results, dlq=topics.dlq),
        Task.CLASSIFICATION,
        FAST_CLASSIFIER,
        processor={**processor, **overrides.pop("processor", {})},
        **overrides,
    )


@contextlib.contextmanager
def running_pipeline(
    ray_address: str, bootstrap: str, topics: PipelineTopics, *, serve_bootstrap: str | None = None, **overrides: Any
) -> Iterator[str]:
    """Topics on ``bootstrap`` and a private Serve app reading them (or, with
    ``serve_bootstrap``, pointed at another broker address)."""
    kafka_io.ensure_topics(
        bootstrap,
        [
            kafka_io.TopicSpec(topics.frames, 4),
            kafka_io.TopicSpec(topics.results, 4),
            kafka_io.TopicSpec(topics.dlq, 1),
        ],
    )
    app = f"test-{uuid.uuid4().hex[:6]}"
    deploy.connect(ray_address)
    deploy.deploy(pipeline_args(serve_bootstrap or bootstrap, topics, **overrides), app_name=app, wait_s=240)
    try:
        yield app
    finally:
        deploy.delete(app)
        kafka_io.delete_topics(bootstrap, topics.names())


def produce_frames(
    bootstrap: str,
    topic: str,
    cameras: list[str],
    per_camera: int,
    *,
    fps: float | None = None,
    capture_ts_ms: int | None = None,
    size: tuple[int, int] = (96, 128),
) -> None:
    producer = kafka_io.producer(bootstrap)
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    period = 1.0 / fps if fps else 0.0
    futures = []
    for seq in range(per_camera):
        for camera in cameras:
            frame = Frame.from_image(np.roll(base, seq, axis=1), camera_id=camera, seq=seq, capture_ts_ms=capture_ts_ms)
            futures.append(kafka_io.send_frame(producer, topic, frame))
        if period:
            time.sleep(period)
    producer.flush()
    for f in futures:
        f.get(timeout=30)
    producer.close()


def produce_in_background(*args: Any, **kwargs: Any) -> threading.Thread:
    thread = threading.Thread(target=produce_frames, args=args, kwargs=kwargs, daemon=True)
    thread.start()
    return thread


def read_topic(bootstrap: str, topic: str, expected: int, timeout_s: float = 120.0) -> list[Any]:
    """Records of ``topic`` from the beginning until ``expected`` arrived, plus a second of
    lingering: a surplus (duplicates) must be seen too."""
    return kafka_io.read_records(bootstrap, topic, expected, timeout_s=timeout_s, linger_ms=1000)


def read_results(bootstrap: str, topic: str, expected: int, timeout_s: float = 120.0) -> list[Result]:
    return [Result.from_bytes(r.value) for r in read_topic(bootstrap, topic, expected, timeout_s)]
