"""The Label Studio sync against a real Label Studio server (from PyPI, in its own venv,
started by PID) and frames sampled by the real pipeline."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from services import kafka_io
from services.labels import snapshot_labels
from services.labelstudio import StudioAccess, StudioSync, read_to_label
from tests.conftest import running
from tests.integration.tracking import (
    DETECTOR_NAME,
    Sequence,
    detector_registry,
    fresh_topics,
    produce,
    topic_names,
    tracked_args,
)
from vlm_core.config import LocalSettings, Topics
from vlm_core.contracts.dlq import FrameRef
from vlm_core.contracts.labels import LabeledSample
from vlm_core.contracts.task import Task
from vlm_core.contracts.to_label import ToLabel
from vlm_core.registry import ModelRegistry

pytestmark = pytest.mark.integration

FRAMES = 12


@pytest.fixture(scope="module")
def studio(settings: LocalSettings) -> Iterator[StudioAccess]:
    with running("labelstudio", settings):  # where started here, stopped after: its memory is freed
        yield StudioAccess.resolve(None, None, settings)


@pytest.fixture(scope="module")
def sampled(kafka_bootstrap: str, ray_address: str) -> Iterator[tuple[Topics, Path]]:
    """Frames through the real pipeline with every uncertain detection sampled to label."""
    from services.inference import deploy

    registry = detector_registry(ray_address)
    topics = fresh_topics(kafka_bootstrap)
    kafka_io.ensure_topics(
        kafka_bootstrap, [kafka_io.TopicSpec(topics.to_label, 1), kafka_io.TopicSpec(topics.labels, 1)]
    )
    args = tracked_args(kafka_bootstrap, topics, registry)
    args["active_learning"] = {"enabled": True, "score_threshold": 0.99, "max_per_minute": 1000}
    app = f"ls-{uuid.uuid4().hex[:6]}"
    deploy.connect(ray_address)
    deploy.deploy(args, app_name=app, wait_s=300)
    try:
        produce(kafka_bootstrap, topics.frames, Sequence("cam-l", seed=5).frames(FRAMES, start_ms=1_000_000))
        records = kafka_io.read_records(kafka_bootstrap, topics.to_label, FRAMES, timeout_s=240)
        assert len(records) >= FRAMES // 2, f"only {len(records)} frames were sampled"
    finally:
        deploy.delete(app)
    yield topics, registry
    kafka_io.delete_topics(kafka_bootstrap, [*topic_names(topics), topics.to_label, topics.labels])


def label_records(bootstrap: str, topic: str) -> list[LabeledSample]:
    records, _ends = kafka_io.read_to_end(bootstrap, topic)
    return [LabeledSample.from_kafka(r.key, r.value, r.headers) for r in records]


def box(label: str) -> list[dict]:
    return [
        {
            "from_name": "label",
            "to_name": "image",
            "type": "rectanglelabels",
            "original_width": 320,
            "original_height": 240,
            "value": {"x": 10, "y": 20, "width": 30, "height": 40, "rotation": 0, "rectanglelabels": [label]},
        }
    ]


def test_sampled_frames_round_trip_through_label_studio(
    studio: StudioAccess, sampled: tuple[Topics, Path], kafka_bootstrap: str, tmp_path: Path
) -> None:
    topics, registry = sampled
    classes = ModelRegistry(registry).production(DETECTOR_NAME).class_names
    client = studio.client()
    dataset = f"ls-{uuid.uuid4().hex[:8]}"
    sync = StudioSync(
        client,
        bootstrap=kafka_bootstrap,
        topics=topics,
        dataset=dataset,
        task=Task.DETECTION,
        class_names=classes,
        min_score=0.0,
    )
    samples, invalid = read_to_label(kafka_bootstrap, topics.to_label)
    assert invalid == 0

    # 1. Sampled frames become tasks, each with the model's boxes as a pre-annotation.
    first = sync.sync()
    assert first.tasks_created == len(samples) and first.frames_expired == 0 and first.labels_published == 0
    tasks = sync.tasks(first.project_id)
    assert sorted(t["data"]["vlm_ref"] for t in tasks) == sorted(s.ref for s in samples)
    by_ref = {s.ref: s for s in samples}
    for t in tasks:
        predicted = [r for p in t["predictions"] for r in p["result"]]
        expected = by_ref[t["data"]["vlm_ref"]].prediction["detection"]["detections"]
        assert len(predicted) == len(expected)
        assert t["data"]["image"].startswith("data:image/jpeg;base64,")

    # 2. An annotation made through Label Studio's API becomes exactly one labels record.
    task = tasks[0]
    annotation = client.create_annotation(task["id"], box(classes[1]))
    second = sync.sync()
    assert (second.tasks_created, second.labels_published, second.relabels) == (0, 1, 0)
    labels = label_records(kafka_bootstrap, topics.labels)
    assert len(labels) == 1 and labels[0].objects[0].class_name == classes[1]
    assert labels[0].objects[0].box == pytest.approx((32.0, 48.0, 128.0, 144.0))

    # 3. A rerun adds nothing.
    third = sync.sync()
    assert (third.tasks_created, third.labels_published, third.labels_unchanged) == (0, 0, 1)
    assert len(label_records(kafka_bootstrap, topics.labels)) == 1

    # 4. A relabel in Label Studio becomes one relabel record of the same sample.
    client.update_annotation(annotation["id"], box(classes[2]))
    fourth = sync.sync()
    assert (fourth.labels_published, fourth.relabels) == (1, 1)
    labels = label_records(kafka_bootstrap, topics.labels)
    assert [label.key for label in labels] == [labels[0].key] * 2
    assert labels[-1].objects[0].class_name == classes[2]

    # 5. The snapshot holds the sample with its latest label.
    snapshot = snapshot_labels(kafka_bootstrap, topics.labels, dataset=dataset, task=Task.DETECTION, root=tmp_path)
    assert snapshot.samples == 1
    item = json.loads((snapshot.path / "samples.jsonl").read_text().splitlines()[0])
    assert item["id"] == task["data"]["vlm_ref"].replace(":", "-")
    assert [snapshot.class_names[i] for i in item["labels"]] == [classes[2]]


def test_a_frame_gone_from_kafka_is_counted_not_fatal(
    studio: StudioAccess, sampled: tuple[Topics, Path], kafka_bootstrap: str
) -> None:
    topics, registry = sampled
    classes = ModelRegistry(registry).production(DETECTOR_NAME).class_names
    samples, _ = read_to_label(kafka_bootstrap, topics.to_label)
    # A sample whose frame was deleted (as retention does), and one past the partition's end.
    gone = ToLabel("cam-gone", 1, 1, FrameRef(topics.frames, samples[0].frame.partition, 10**9), {"detection": 0.1})
    missing = ToLabel("cam-gone", 2, 1, FrameRef("no.such.topic", 0, 0), {"detection": 0.1})
    producer = kafka_io.producer(kafka_bootstrap)
    for doc in (gone, missing):
        producer.send(topics.to_label, key=b"cam-gone", value=doc.to_bytes()).get(timeout=30)
    producer.close()
    sync = StudioSync(
        studio.client(),
        bootstrap=kafka_bootstrap,
        topics=topics,
        dataset=f"ls-{uuid.uuid4().hex[:8]}",
        task=Task.DETECTION,
        class_names=classes,
    )
    report = sync.sync()
    assert report.frames_expired == 2
    assert report.tasks_created == len(samples)
    assert "2 sampled frames expired" in report.describe()


def test_the_closed_loop_runs_every_stage_and_loses_no_frame(
    studio: StudioAccess, settings: LocalSettings, ray_address: str, tmp_path: Path
) -> None:
    """The plumbing of `vlm loop` in minutes: drift, live scoring, sampling, Label Studio
    tasks annotated by the oracle, labels, a fine-tune, the two-domain gate, the hot swap. The
    gate is opened wide so that the swap always happens; the measured run is in the README."""
    import shutil

    from services.loop import DRIFT_CAMERA, ClosedLoop, LoopSettings

    registry_dir = tmp_path / "registry"
    shutil.copytree(detector_registry(ray_address), registry_dir)  # the loop adds versions
    loop = LoopSettings(
        fps=3,
        before_s=8,
        labels=6,
        min_drift_s=6,
        after_s=8,
        finetune_epochs=1,
        replay_samples=10,
        gate_scenes=10,
        new_min_gain=-1.0,
        old_tolerance=1.0,
        max_per_minute=40,
        registry=registry_dir,
        model_name=DETECTOR_NAME,
        timeout_s=600,
    )
    lines: list[str] = []
    report = ClosedLoop(settings, loop, say=lines.append).run(view_port=None)
    drift = loop.drift.value
    assert report.frames_sent > 0 and report.frames_without_result == 0, lines[-5:]
    assert report.duplicate_results == 0
    assert report.labels_by_domain.get(drift, 0) >= loop.labels
    # Every annotation the oracle made went through Label Studio to the labels topic and into the snapshot.
    assert report.labels_used == sum(report.labels_by_domain.values())
    assert report.studio_tasks >= report.labels_used
    assert [check["domain"] for check in report.gate] == [drift, "base"]
    assert all(check["production"] is not None for check in report.gate)
    assert report.promoted and report.candidate == f"{DETECTOR_NAME}@2"
    assert report.swap_s is not None
    assert None not in (report.before_drift, report.after_drift, report.after_swap, report.old_after_swap)
    served = {(p.camera_id, p.domain, p.model) for p in report.phases}
    assert (DRIFT_CAMERA, drift, f"{DETECTOR_NAME}@2") in served
    candidate = ModelRegistry(registry_dir).get(DETECTOR_NAME, 2)
    assert candidate.parent == 1 and candidate.status.value == "production"
