"""Helpers for tracking tests: a trained scenes detector, synthetic sequences on Kafka, and
a tracked pipeline on private topics.

The detector is trained once by the project's own training job (Ray Train) and kept in a
cache keyed by its recipe, so later runs on the same machine reuse it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services import kafka_io
from services.inference import deploy
from vlm_core.config import Topics
from vlm_core.contracts.event import Event, EventType
from vlm_core.contracts.frame import Frame
from vlm_core.contracts.result import Result
from vlm_core.contracts.task import Task
from vlm_core.datasets.scenes import SceneConfig, SceneMotion, SceneVideo
from vlm_core.pipeline import model_pipeline_args
from vlm_core.registry import ModelRegistry

DETECTOR_NAME = "scenes-detector"
DETECTOR_RECIPE = ["--data", "scenes://?n=300&items=3", "--epochs", "3", "--workers", "1", "--eval-limit", "50"]
INTERVAL_MS = 100
LINE = {"name": "middle", "points": [[0.5, 0.0], [0.5, 1.0]], "units": "normalized"}
TRACKING = {"high_score": 0.3, "new_track_score": 0.3}


def detector_registry(ray_address: str) -> Path:
    """A registry holding a production scenes detector, trained here when not cached."""
    key = hashlib.sha256(json.dumps(DETECTOR_RECIPE).encode()).hexdigest()[:12]
    root = Path(os.environ.get("VLM_TEST_MODELS", Path.home() / ".cache" / "vlm-stream" / "test-models")) / key
    if ModelRegistry(root).production(DETECTOR_NAME) is None:
        env = {**os.environ, "VLM_REGISTRY_DIR": str(root), "RAY_ADDRESS": ray_address}
        command = [sys.executable, "-m", "services.cli", "train", "--task", "detection", *DETECTOR_RECIPE]
        subprocess.run([*command, "--name", DETECTOR_NAME, "--promote"], env=env, check=True, timeout=1200)
    return root


@dataclass(frozen=True)
class Sequence:
    camera_id: str
    seed: int

    def frames(self, count: int, start_ms: int) -> list[Frame]:
        motion = SceneMotion(bounce=False, line_x=0.5, min_speed=2.5, max_speed=4.0)
        video = SceneVideo(
            SceneConfig(min_items=3, max_items=3, min_item_size=64, max_item_size=96), seed=self.seed, motion=motion
        )
        return [
            Frame.from_image(
                video.next().image, camera_id=self.camera_id, seq=t, capture_ts_ms=start_ms + INTERVAL_MS * t
            )
            for t in range(count)
        ]


def produce(bootstrap: str, topic: str, frames: list[Frame]) -> None:
    producer = kafka_io.producer(bootstrap)
    try:
        futures = [kafka_io.send_frame(producer, topic, f) for f in frames]
        producer.flush(60)
        for future in futures:
            future.get(timeout=30)
    finally:
        producer.close()


def interleave(*per_camera: list[Frame]) -> list[Frame]:
    return [f for group in zip(*per_camera, strict=True) for f in group]


def fresh_topics(bootstrap: str) -> Topics:
    """Private topics of two partitions (cam-b and cam-c on 0, cam-a on 1), created."""
    topics = kafka_io.private_topics(f"t.{uuid.uuid4().hex[:8]}")
    kafka_io.ensure_pipeline_topics(bootstrap, topics, partitions=2)
    return topics


def topic_names(topics: Topics) -> list[str]:
    return [topics.frames, topics.results, topics.dlq, topics.events, topics.tracks_state]


def tracked_args(bootstrap: str, topics: Topics, registry: Path, group_id: str | None = None) -> dict[str, Any]:
    return model_pipeline_args(
        bootstrap,
        topics,
        Task.DETECTION,
        {
            "spec": {"task": "detection", "arch": "fasterrcnn_mobilenet_v2", "score_threshold": 0.1},
            "registry_name": DETECTOR_NAME,
            "deployment": {"num_cpus": 0.5, "max_batch_size": 8, "torch_threads": 1},
        },
        processor={"group_id": group_id or f"g-{uuid.uuid4().hex[:8]}", "batch_size": 8, "poll_timeout_ms": 50},
        # A quickly trained detector scores low: the tracker takes boxes from 0.3.
        cameras={"default": {"tasks": ["detection"], "tracking": TRACKING, "analytics": {"lines": [LINE]}}},
        registry_dir=str(registry),
    )


@contextlib.contextmanager
def tracked_pipeline(
    ray_address: str,
    bootstrap: str,
    topics: Topics,
    registry: Path,
    *,
    keep_topics: bool = False,
    group_id: str | None = None,
) -> Iterator[str]:
    app = f"track-{uuid.uuid4().hex[:6]}"
    deploy.connect(ray_address)
    deploy.deploy(tracked_args(bootstrap, topics, registry, group_id), app_name=app, wait_s=300)
    try:
        yield app
    finally:
        deploy.delete(app)
        if not keep_topics:
            kafka_io.delete_topics(bootstrap, topic_names(topics))


@dataclass
class Outcome:
    """What a tracked run produced: every copy of every result, and the unique events."""

    results: dict[tuple[str, int], list[Result]]
    events: dict[str, Event]

    def ids(self, camera: str, seq: int) -> list[int | None]:
        """The track ids of one frame's detections (every copy must agree)."""
        copies = self.results[(camera, seq)]
        ids = {tuple(_track_ids(r)) for r in copies}
        assert len(ids) == 1, f"{camera}#{seq} was processed again with other ids: {ids}"
        return list(ids.pop())

    def line_counts(self, camera: str) -> dict[str, int]:
        counts: dict[str, int] = defaultdict(int)
        for event in self.events.values():
            if event.camera_id == camera and event.type is EventType.LINE_CROSSED and event.direction:
                counts[event.direction] += 1
        return dict(counts)


def collect(bootstrap: str, topics: Topics, expected: int, timeout_s: float = 300) -> Outcome:
    """Results until ``expected`` distinct (camera, seq) have one (a failover repeats some,
    so a count of records is not enough), then the events topic to its end."""
    import time

    reader, _partitions = kafka_io.topic_reader(bootstrap, topics.results, from_beginning=True)
    results: dict[tuple[str, int], list[Result]] = defaultdict(list)
    deadline = time.monotonic() + timeout_s
    try:
        while len(results) < expected and time.monotonic() < deadline:
            for records in reader.poll(timeout_ms=500).values():
                for rec in records:
                    result = Result.from_bytes(rec.value)
                    results[(result.camera_id, result.seq)].append(result)
        for records in reader.poll(timeout_ms=1000).values():  # a late copy must be seen too
            for rec in records:
                result = Result.from_bytes(rec.value)
                results[(result.camera_id, result.seq)].append(result)
    finally:
        reader.close()
    event_records, _ = kafka_io.read_to_end(bootstrap, topics.events)
    events = {e.event_id: e for e in (Event.from_bytes(r.value) for r in event_records)}
    return Outcome(dict(results), events)


def _track_ids(result: Result) -> list[int | None]:
    assert result.detection is not None and result.tracking is not None
    return [d.track_id for d in result.detection.detections]
