"""``vlm demo``: the product's main job on one machine."""

from __future__ import annotations

import time
import uuid
from collections import defaultdict

from rich.console import Console
from rich.table import Table

from services.ingest.worker import CameraConfig, IngestRunner
from vlm_core.config import LocalSettings, Topics
from vlm_core.errors import InfrastructureError
from vlm_core.frame import Frame, FrameError
from vlm_core.local import LocalStack
from vlm_core.sources import sample_video_path


def demo_cameras(frames_per_camera: int) -> list[CameraConfig]:
    cameras = [
        CameraConfig(
            "synthetic-0", "synthetic://?seed=1&width=320&height=240&items=4", fps=15, max_frames=frames_per_camera
        )
    ]
    video = sample_video_path()
    if video is not None:
        cameras.insert(
            0, CameraConfig("vtest", str(video), fps=15, max_width=640, loop=True, max_frames=frames_per_camera)
        )
    return cameras


def run_demo(settings: LocalSettings, *, frames_per_camera: int, console: Console, keep_running: bool) -> None:
    from kafka import TopicPartition

    from vlm_core.cli import create_default_topics
    from vlm_core.kafka_io import consumer

    stack = LocalStack(settings)
    with console.status("starting Kafka and Ray (first run downloads Kafka's jars)..."):
        stack.up(["kafka", "ray"])
        create_default_topics(settings.bootstrap_servers)
    topic = Topics().frames
    cameras = demo_cameras(frames_per_camera)
    if len(cameras) == 1:
        console.print(
            "[yellow]OpenCV's sample vtest.avi is not installed (Debian opencv-doc); synthetic camera only[/]"
        )

    reader = consumer(settings.bootstrap_servers, group_id=None)
    partitions = [TopicPartition(topic, p) for p in sorted(reader.partitions_for_topic(topic) or [])]
    reader.assign(partitions)
    start_offsets = reader.end_offsets(partitions)
    for tp, offset in start_offsets.items():
        reader.seek(tp, offset)

    runner = IngestRunner(cameras, settings.bootstrap_servers, topic)
    started = time.monotonic()
    runner.start()
    expected = frames_per_camera * len(cameras)
    received: dict[str, set[int]] = defaultdict(set)
    decoded: dict[str, int] = defaultdict(int)
    sizes: dict[str, tuple[int, int]] = {}
    errors = 0
    run_tag = uuid.uuid4().hex[:6]
    deadline = time.monotonic() + max(60.0, frames_per_camera / 5)
    try:
        while sum(len(s) for s in received.values()) < expected and time.monotonic() < deadline:
            for records in reader.poll(timeout_ms=500).values():
                for rec in records:
                    try:
                        frame = Frame.from_kafka(rec.key, rec.value, rec.headers)
                        image = frame.decode()
                    except FrameError:
                        errors += 1
                        continue
                    received[frame.camera_id].add(frame.seq)
                    decoded[frame.camera_id] += 1
                    sizes[frame.camera_id] = (image.shape[1], image.shape[0])
    finally:
        runner.stop()
        reader.close()
    elapsed = time.monotonic() - started
    table = Table(title=f"frames round trip through Kafka ({topic}, run {run_tag})")
    for column in ("camera", "sent", "received", "decoded", "size", "fps"):
        table.add_column(column)
    for worker in runner.workers:
        cid = worker.config.camera_id
        w, h = sizes.get(cid, (0, 0))
        table.add_row(
            cid,
            str(worker.stats.sent),
            str(len(received[cid])),
            str(decoded[cid]),
            f"{w}x{h}",
            f"{len(received[cid]) / elapsed:.1f}",
        )
    console.print(table)
    console.print(f"undecodable: {errors}; elapsed {elapsed:.1f}s; broker {settings.bootstrap_servers}")
    if sum(len(s) for s in received.values()) < expected:
        raise InfrastructureError(f"only {sum(len(s) for s in received.values())} of {expected} frames came back")
    if not keep_running:
        stack.down(["ray", "kafka"])
