"""``vlm demo``: the product's main job on one machine.

Starts local Kafka, Ray (and Prometheus when installed), deploys the Serve pipeline from
``deploy/serve/pipeline.yaml``, ingests OpenCV's sample video and a ``synthetic://``
scene as two cameras, and shows a live per-camera summary until Ctrl-C (or --duration).
It stops what it started.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque
from typing import Any

import numpy as np
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from services.ingest.worker import CameraConfig, IngestRunner
from vlm_core.config import LocalSettings, Topics
from vlm_core.local import LocalStack
from vlm_core.models.spec import Task
from vlm_core.registry import ModelRegistry
from vlm_core.results import Result
from vlm_core.sources import sample_video_path

APP_NAME = "vlm"
DEMO_REGISTRY_NAMES = {Task.DETECTION: "scenes-detector", Task.SEGMENTATION: "scenes-segmenter"}


def demo_cameras(fps: float) -> list[CameraConfig]:
    cameras = [CameraConfig("synthetic-0", "synthetic://?seed=1&width=320&height=240&items=4", fps=fps)]
    video = sample_video_path()
    if video is not None:
        cameras.insert(0, CameraConfig("vtest", str(video), fps=fps, max_width=640, loop=True))
    return cameras


class LiveStats:
    """Per-camera counters and latencies from the results topic (a reader thread)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap, self.topic = bootstrap, topic
        self.count: dict[str, int] = defaultdict(int)
        self.recent: dict[str, deque[tuple[float, float]]] = defaultdict(lambda: deque(maxlen=2000))
        self.last: dict[str, str] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from services.results import describe
        from vlm_core.kafka_io import topic_reader

        reader, _partitions = topic_reader(self.bootstrap, self.topic, from_beginning=False)
        try:
            while not self.stop.is_set():
                for records in reader.poll(timeout_ms=500).values():
                    for rec in records:
                        result = Result.from_bytes(rec.value, validate=False)
                        self.count[result.camera_id] += 1
                        self.recent[result.camera_id].append((time.time(), float(result.latency_ms)))
                        self.last[result.camera_id] = describe(result).split("  ", 2)[-1]
        finally:
            reader.close()

    def table(self, drops: dict[str, float]) -> Table:
        table = Table(title="vlm demo: live results (Ctrl-C to stop)", expand=True)
        for col in ("camera", "results", "fps (5s)", "p50 ms", "p99 ms", "dropped", "latest"):
            table.add_column(col, overflow="fold")
        now = time.time()
        for camera in sorted(self.count):
            window = [lat for ts, lat in self.recent[camera] if now - ts <= 5]
            lats = [lat for _ts, lat in self.recent[camera]]
            p50, p99 = (np.percentile(lats, 50), np.percentile(lats, 99)) if lats else (float("nan"),) * 2
            table.add_row(
                camera,
                str(self.count[camera]),
                f"{len(window) / 5:.1f}",
                f"{p50:.0f}",
                f"{p99:.0f}",
                f"{drops.get(camera, 0):.0f}",
                self.last.get(camera, ""),
            )
        return table


def _drops_by_camera(stats: dict[str, Any]) -> dict[str, float]:
    drops: dict[str, float] = defaultdict(float)
    for key, value in stats.get("counters", {}).items():
        if key.startswith("vlm_frames_dropped_total"):
            camera = key.split("'camera_id': '", 1)[-1].split("'", 1)[0]
            drops[camera] += value
    return drops


def run_demo(
    settings: LocalSettings,
    *,
    console: Console,
    duration_s: float | None = None,
    fps: float = 5.0,
    stop_stack: bool = True,
) -> dict[str, int]:
    from services.inference import deploy
    from vlm_core.cli import create_default_topics
    from vlm_core.errors import InfrastructureError

    stack = LocalStack(settings)
    already = {s.name for s in stack.status() if s.running}
    with console.status("starting Kafka, Ray and Prometheus (the first run downloads Kafka's jars)..."):
        stack.up()
        create_default_topics(settings.bootstrap_servers)
    started = [name for name in ("kafka", "ray", "prometheus") if name not in already]
    _name, args = deploy.load_args(None, None)
    args["bootstrap"] = settings.bootstrap_servers
    # Trained detectors and segmenters come from the registry (production versions of
    # DEMO_REGISTRY_NAMES); without them the demo serves what exists and says so.
    registry = ModelRegistry(settings.registry_dir)
    for task, name in DEMO_REGISTRY_NAMES.items():
        production = None if task.value in args["models"] else registry.production(name)
        if production is not None:
            args["models"][task.value] = {
                "spec": {"task": task.value, "arch": production.arch},
                "registry_name": name,
                "deployment": {"num_cpus": 0.5, "max_batch_size": 16},
            }
    args["registry_dir"] = str(registry.root)
    served = sorted(Task(t).value for t in args["models"])
    missing = [t.value for t in Task if t.value not in served]
    if missing:
        console.print(
            f"[yellow]no trained model for {', '.join(missing)} yet: serving {', '.join(served)} only "
            "(the demo never shows labels from untrained weights)[/]"
        )
    args["cameras"]["default"]["tasks"] = served
    # A live view: frames the models cannot reach within 2 s are dropped (and counted in
    # the table) instead of building a backlog; two cores run three models here.
    args["cameras"]["default"].update({"drop_policy": "drop_stale", "max_age_ms": 2000})
    deploy.connect(settings.ray_address)
    with console.status(f"deploying the Serve pipeline ({', '.join(served)})..."):
        deploy.deploy(args, app_name=APP_NAME)
    from services.ingest.metrics import serve_metrics

    serve_metrics(settings.ingest_metrics_port, settings.host)
    cameras = demo_cameras(fps)
    if len(cameras) == 1:
        console.print("[yellow]OpenCV's sample vtest.avi is missing (Debian opencv-doc): synthetic camera only[/]")
    runner = IngestRunner(cameras, settings.bootstrap_servers, Topics().frames)
    live_stats = LiveStats(settings.bootstrap_servers, Topics().results)
    live_stats.thread.start()
    runner.start()
    console.print(
        f"metrics: Prometheus {settings.prometheus_url}  (query ray_vlm_frames_processed_total), "
        f"Ray export http://{settings.host}:{settings.ray_metrics_port}/metrics, "
        f"ingest http://{settings.host}:{settings.ingest_metrics_port}/metrics"
    )
    deadline = None if duration_s is None else time.monotonic() + duration_s
    try:
        with Live(console=console, refresh_per_second=1) as live:
            while deadline is None or time.monotonic() < deadline:
                try:
                    stats = deploy.processor_stats(APP_NAME)
                except Exception as exc:  # a restarting replica must not end the demo
                    stats = {"error": str(exc)}
                err = stats.get("error") or ""
                live.update(
                    Group(live_stats.table(_drops_by_camera(stats)), Panel(err, title="processor error") if err else "")
                )
                time.sleep(1)
    except KeyboardInterrupt:
        console.print("stopping...")
    finally:
        runner.stop()
        live_stats.stop.set()
        live_stats.thread.join(5)
        deploy.delete(APP_NAME)
        if stop_stack and started:
            stack.down(started)
    console.print("results per camera: " + ", ".join(f"{c}={n}" for c, n in sorted(live_stats.count.items())))
    if started and not stop_stack:
        console.print("the local stack is still running; stop it with `vlm local down`")
    if not live_stats.count:
        raise InfrastructureError(
            "the demo produced no results", hint="see the replica logs under /tmp/ray/session_latest/logs/serve"
        )
    return dict(live_stats.count)
