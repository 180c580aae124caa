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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.progress import Progress
from rich.table import Table
from rich.text import Text

from services.ingest.worker import CameraConfig, IngestRunner
from services.localstack import LocalStack
from services.trainer.progress import TrainingProgress, progress_bar
from vlm_core import metrics as m
from vlm_core.config import LocalSettings, Topics
from vlm_core.contracts.event import Event, EventType
from vlm_core.contracts.result import Result
from vlm_core.contracts.task import Task
from vlm_core.registry import ModelRegistry
from vlm_core.sources import sample_video_path
from vlm_core.stream.processor import NOT_ROUTED

APP_NAME = "vlm"
DEMO_REGISTRY_NAMES = {Task.DETECTION: "scenes-detector", Task.SEGMENTATION: "scenes-segmenter"}
#: What the demo trains once where the registry has no production model of a task: quick
#: configurations, on one worker beside the running stream (figures in the README).
QUICK_TRAINING: dict[Task, dict[str, Any]] = {
    Task.DETECTION: {"data": "scenes://?n=400", "epochs": 4},
    Task.SEGMENTATION: {
        "data": "scenes://?n=1500",
        "epochs": 10,
        "batch_size": 8,
        "input_size": 256,
        "crop_size": 160,
    },
}


#: The real-video camera, and the optional application of ``deploy/serve/pipeline.yaml``
#: that serves it COCO-pretrained models where torchvision's weights load (in torch's hub
#: cache, or downloaded on an online machine): people, cars and bicycles named as such. The
#: scenes models know only Fashion-MNIST items; on a street they see clothes.
REAL_VIDEO_CAMERA = "vtest"
COCO_APP_NAME = "vlm-coco"


def _shipped_applications(coco: bool) -> dict[str, dict[str, Any]]:
    from services.inference import deploy
    from vlm_core.pipeline import load_serve_config, serve_applications, without_applications

    apps = serve_applications(load_serve_config(deploy.DEFAULT_CONFIG))
    return apps if coco else without_applications(apps, {COCO_APP_NAME})


def coco_pipeline_args(settings: LocalSettings) -> dict[str, Any]:
    """The shipped optional application: COCO detection and segmentation for the
    real-video camera only, in its own consumer group on the same topics."""
    args = _shipped_applications(coco=True)[COCO_APP_NAME]
    args["bootstrap"] = settings.bootstrap_servers
    return args


def coco_models() -> dict[Task, str]:
    """The COCO application's architecture per task."""
    from vlm_core.pipeline import PipelineConfig

    config = PipelineConfig.parse(_shipped_applications(coco=True)[COCO_APP_NAME], source=COCO_APP_NAME)
    return {task: model.model_spec().arch for task, model in config.models.items()}


def fetch_coco_weights(timeout_s: float | None = None) -> list[str]:
    """Bring the COCO application's weights into torch's hub cache where a download works.
    Returns the files still missing (empty: every COCO model loads), each with the reason."""
    from services.inference import deploy

    serve_plan = deploy.plan().without_unavailable(download_timeout_s=timeout_s)
    return serve_plan.missing_weights.get(COCO_APP_NAME, [])


def demo_cameras(fps: float) -> list[CameraConfig]:
    # Its items cross, leave the frame and come back: the pipeline tracks them and counts
    # them at a line and a zone (deploy/serve/pipeline.yaml, cameras.overrides).
    cameras = [
        CameraConfig("synthetic-0", "synthetic://?seed=1&width=320&height=240&items=4&exits=1&crossings=1", fps=fps)
    ]
    video = sample_video_path()
    if video is not None:
        cameras.insert(0, CameraConfig("vtest", str(video), fps=fps, max_width=640, loop=True))
    return cameras


class LiveStats:
    """Per-camera counters and latencies from the results topic (a reader thread)."""

    def __init__(self, bootstrap: str, topic: str, events_topic: str | None = None) -> None:
        self.bootstrap, self.topic = bootstrap, topic
        self.count: dict[str, int] = defaultdict(int)
        #: Per camera, what its lines and zones counted (``vlm.events``).
        self.counts: dict[str, EventCounts] = defaultdict(EventCounts)
        self.recent: dict[str, deque[tuple[float, float]]] = defaultdict(lambda: deque(maxlen=2000))
        self.last: dict[str, str] = {}
        self.lock = threading.Lock()  # the reader thread appends while the screen reads
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.events_thread = (
            threading.Thread(target=self._run_events, args=(events_topic,), daemon=True) if events_topic else None
        )

    def start(self) -> None:
        self.thread.start()
        if self.events_thread is not None:
            self.events_thread.start()

    def join(self, timeout: float) -> None:
        self.stop.set()
        for thread in (self.thread, self.events_thread):
            if thread is not None:
                thread.join(timeout)

    def _follow(self, topic: str, parse: Callable[[bytes], Any], handle: Callable[[Any], None]) -> None:
        """Parse each new record of ``topic`` and hand it on, until stopped. A record that
        does not parse is somebody else's on the topic: not ours to show."""
        from services.kafka_io import follow_topic

        def on_records(records: list[Any]) -> None:
            for rec in records:
                try:
                    doc = parse(rec.value)
                except Exception:
                    continue
                handle(doc)

        follow_topic(self.bootstrap, topic, on_records, self.stop, from_beginning=False)

    def _run_events(self, topic: str) -> None:
        seen: set[str] = set()  # a frame processed again repeats its events

        def add(event: Event) -> None:
            if event.event_id in seen:
                return
            if len(seen) > 100_000:
                seen.clear()
            seen.add(event.event_id)
            with self.lock:
                self.counts[event.camera_id].add(event)

        self._follow(topic, lambda value: Event.from_bytes(value, validate=False), add)

    def _run(self) -> None:
        from services.results import describe

        def add(result: Result) -> None:
            line = describe(result).split("  ", 2)[-1]
            with self.lock:
                self.count[result.camera_id] += 1
                self.recent[result.camera_id].append((time.time(), float(result.latency_ms)))
                self.last[result.camera_id] = line

        self._follow(self.topic, lambda value: Result.from_bytes(value, validate=False), add)

    def table(self, drops: dict[str, float]) -> Table:
        table = Table(title="vlm demo: live results (Ctrl-C to stop)", expand=True)
        for col in ("camera", "results", "fps (5s)", "p50 ms", "p99 ms", "dropped", "lines / zones", "latest"):
            table.add_column(col, overflow="fold")
        now = time.time()
        with self.lock:
            snapshot = {camera: (self.count[camera], list(self.recent[camera])) for camera in self.count}
            counted = {camera: self.counts[camera].describe() for camera in self.count if camera in self.counts}
        for camera, (count, recent) in sorted(snapshot.items()):
            window = [lat for ts, lat in recent if now - ts <= 5]
            lats = [lat for _ts, lat in recent]
            p50, p99 = (np.percentile(lats, 50), np.percentile(lats, 99)) if lats else (float("nan"),) * 2
            table.add_row(
                Text(camera),  # user data: never read as markup
                str(count),
                f"{len(window) / 5:.1f}",
                f"{p50:.0f}",
                f"{p99:.0f}",
                f"{drops.get(m.metric_label(camera), 0):.0f}",
                Text(counted.get(camera, "")),
                self.last.get(camera, ""),
            )
        return table


@dataclass
class EventCounts:
    """One camera's line and zone counts as its events tell them; a ``counts`` snapshot
    replaces the running tally (it is the processor's own)."""

    lines: dict[str, dict[str, int]] = field(default_factory=dict)
    occupancy: dict[str, int] = field(default_factory=dict)
    entered: dict[str, int] = field(default_factory=dict)

    def add(self, event: Event) -> None:
        if event.type is EventType.COUNTS and event.counts is not None:
            self.lines = {name: dict(c) for name, c in event.counts.get("lines", {}).items()}
            zones = event.counts.get("zones", {})
            self.occupancy = {name: c["occupancy"] for name, c in zones.items()}
            self.entered = {name: c["entered"] for name, c in zones.items()}
        elif event.type is EventType.LINE_CROSSED and event.line and event.direction:
            line = self.lines.setdefault(event.line, {"in": 0, "out": 0})
            line[event.direction] = line.get(event.direction, 0) + 1
        elif event.type is EventType.ZONE_ENTERED and event.zone:
            self.occupancy[event.zone] = self.occupancy.get(event.zone, 0) + 1
            self.entered[event.zone] = self.entered.get(event.zone, 0) + 1
        elif event.type is EventType.ZONE_EXITED and event.zone:
            self.occupancy[event.zone] = max(0, self.occupancy.get(event.zone, 0) - 1)

    def describe(self) -> str:
        lines = [f"{name}: in {c.get('in', 0)} out {c.get('out', 0)}" for name, c in sorted(self.lines.items())]
        zones = [f"{name}: {n} now, {self.entered.get(name, 0)} entered" for name, n in sorted(self.occupancy.items())]
        return "; ".join(lines + zones)


def _drops_by_camera(counters: list[m.CounterSample]) -> dict[str, float]:
    """Dropped frames per camera label (``metric_label`` of the camera id)."""
    drops: dict[str, float] = defaultdict(float)
    for sample in counters:
        if sample.name == m.FRAMES_DROPPED.name and sample.tags.get("reason") != NOT_ROUTED:
            drops[sample.tags.get("camera_id", "")] += sample.value
    return drops


def pipeline_args(
    settings: LocalSettings, registry: ModelRegistry, *, coco: bool = False
) -> tuple[dict[str, Any], list[str], list[Task]]:
    """The Serve pipeline's arguments for the demo: ``deploy/serve/pipeline.yaml`` plus the
    registry's production detector and segmenter where they exist. With ``coco`` the
    real-video camera is left to :func:`coco_pipeline_args`. Returns the arguments, the tasks
    served and the tasks that have no trained model yet."""
    args = _shipped_applications(coco)[APP_NAME]
    args["bootstrap"] = settings.bootstrap_servers
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
    args["cameras"]["default"]["tasks"] = served
    # A live view: frames the models cannot reach within 2 s are dropped (and counted in
    # the table) instead of building a backlog; two cores run three models here.
    args["cameras"]["default"].update({"drop_policy": "drop_stale", "max_age_ms": 2000})
    return args, served, [t for t in Task if t.value not in served]


def serving_notes(served: list[str], coco_missing: list[str] | None, real_video: bool) -> list[str]:
    """What the demo serves on which camera, and why: one line each."""
    scenes = ", ".join(served)
    if not real_video:
        return [f"synthetic-0: {scenes} (ImageNet classifier; scenes detector and segmenter from the registry)"]
    if coco_missing is None or not coco_missing:
        coco = " + ".join(f"{t.value} {arch} (COCO)" for t, arch in coco_models().items())
        return [
            f"{REAL_VIDEO_CAMERA}: {coco}",
            f"synthetic-0: {scenes} (the ImageNet classifier and the registry's scenes models)",
        ]
    return [
        f"{REAL_VIDEO_CAMERA} and synthetic-0: {scenes} (the ImageNet classifier and the registry's scenes "
        "models). torchvision's COCO weights are not "
        f"in torch's cache and could not be downloaded: {'; '.join(coco_missing)}. On {REAL_VIDEO_CAMERA}, a real "
        "street, the scenes models see Fashion-MNIST clothes where there are people; put the files there (or run "
        "online) and the demo serves COCO detection and segmentation on it."
    ]


def _start_view(settings: LocalSettings, console: Console) -> Any:
    """The live web view beside the terminal table; the demo goes on without it if its
    port is taken."""
    from services.view import ViewServer, ViewSettings, hub_from_config

    view_settings = ViewSettings(host=settings.host, port=settings.view_port)
    try:
        view = ViewServer(hub_from_config(None, settings.bootstrap_servers), view_settings).start()
    except Exception as exc:
        console.print(f"[yellow]the live view could not start ({exc}); set VLM_VIEW_PORT to a free port[/]")
        return None
    console.print(f"[bold]live view: {view_settings.url}[/] (frames with their results drawn, events)")
    return view


class DemoTrainer(threading.Thread):
    """Trains the missing demo models one after another on one Ray Train worker, while the
    stream runs, and adds each to the running pipeline once it is registered."""

    def __init__(
        self, tasks: list[Task], settings: LocalSettings, registry: ModelRegistry, bar: Progress, *, coco: bool
    ) -> None:
        super().__init__(name="demo-trainer", daemon=True)
        self.tasks, self.settings, self.registry, self.bar, self.coco = tasks, settings, registry, bar, coco

    def run(self) -> None:
        from services.inference import deploy
        from services.trainer.job import TrainRequest, run_training

        for task in self.tasks:
            request = TrainRequest(
                task=task,
                name=DEMO_REGISTRY_NAMES[task],
                workers=1,
                # A scheduling token, not a core: the worker runs one torch thread, and the
                # Serve replicas already hold most of the local cluster's logical CPUs.
                cpus_per_worker=0.25,
                promote=True,
                **QUICK_TRAINING[task],
            ).resolved()
            report = TrainingProgress(self.bar, request.epochs or 1, label=f"{request.name}: ")
            try:
                outcome = run_training(
                    request,
                    ray_address=self.settings.ray_address,
                    registry_dir=self.registry.root,
                    storage=self.settings.registry_dir.parent / "train",
                    on_progress=report,
                )
                figures = ", ".join(f"{k} {v:.3f}" for k, v in outcome.metrics.items() if k != "train_s")
                report.print(f"[green]trained {outcome.version.ref} in {outcome.train_s:.0f}s ({figures})[/]")
                args, served, _missing = pipeline_args(self.settings, self.registry, coco=self.coco)
                deploy.deploy(args, app_name=APP_NAME)
                report.print(f"[green]now serving {', '.join(served)}[/]")
            except Exception as exc:  # the stream goes on with what it serves
                report.print(f"[red]training {request.name} failed: {exc}[/]")


def run_demo(
    settings: LocalSettings,
    *,
    console: Console,
    duration_s: float | None = None,
    fps: float = 5.0,
    stop_stack: bool = True,
    train_missing: bool = True,
) -> dict[str, int]:
    from services.inference import deploy
    from services.localstack import create_default_topics
    from vlm_core.errors import InfrastructureError

    stack = LocalStack(settings)
    already = {s.name for s in stack.status() if s.running}
    with console.status("starting Kafka, Ray and Prometheus (the first run downloads Kafka's jars)..."):
        stack.up()
        create_default_topics(settings.bootstrap_servers)
    started = [name for name in ("kafka", "ray", "prometheus") if name not in already]
    registry = ModelRegistry(settings.registry_dir)
    cameras = demo_cameras(fps)
    real_video = any(c.camera_id == REAL_VIDEO_CAMERA for c in cameras)
    coco_missing = None
    if real_video:
        with console.status("looking for torchvision's COCO weights for the real-video camera..."):
            coco_missing = fetch_coco_weights()
    coco = real_video and not coco_missing
    args, served, missing = pipeline_args(settings, registry, coco=coco)
    for line in serving_notes(served, coco_missing, real_video):
        console.print(f"serving {line}", highlight=False)
    trainer: DemoTrainer | None = None
    if missing and train_missing:
        console.print(
            f"[yellow]no trained model for {', '.join(t.value for t in missing)} yet: serving "
            f"{', '.join(served)} now and training quick ones in the background (once; they are cached "
            "in the registry). The demo never shows labels from untrained weights.[/]"
        )
    elif missing:
        console.print(
            f"[yellow]no trained model for {', '.join(t.value for t in missing)}: serving {', '.join(served)} only[/]"
        )
    deploy.connect(settings.ray_address)
    with console.status(f"deploying the Serve pipeline ({', '.join(served)})..."):
        deploy.deploy(args, app_name=APP_NAME)
        if coco:
            deploy.deploy(coco_pipeline_args(settings), app_name=COCO_APP_NAME)
    from services.ingest.metrics import serve_metrics

    serve_metrics(settings.ingest_metrics_port, settings.host)
    if not real_video:
        console.print("[yellow]OpenCV's sample vtest.avi is missing (Debian opencv-doc): synthetic camera only[/]")
    view = _start_view(settings, console)
    runner = IngestRunner(cameras, settings.bootstrap_servers, Topics().frames)
    live_stats = LiveStats(settings.bootstrap_servers, Topics().results, Topics().events)
    live_stats.start()
    runner.start()
    bar = progress_bar(console=console)
    if missing and train_missing:
        trainer = DemoTrainer(missing, settings, registry, bar, coco=coco)
        trainer.start()
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
                    counters, err = stats.counters, stats.error
                except Exception as exc:  # a restarting replica must not end the demo
                    counters, err = [], str(exc)
                live.update(
                    Group(
                        live_stats.table(_drops_by_camera(counters)),
                        Panel(err, title="processor error") if err else "",
                        bar if trainer is not None and trainer.is_alive() else "",
                    )
                )
                time.sleep(1)
    except KeyboardInterrupt:
        console.print("stopping...")
    finally:
        if trainer is not None and trainer.is_alive():
            console.print("[yellow]stopped while training; the next `vlm demo` trains again[/]")
        runner.stop()
        if view is not None:
            view.stop()
        live_stats.join(5)
        deploy.delete(APP_NAME)
        if coco:
            deploy.delete(COCO_APP_NAME)
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
