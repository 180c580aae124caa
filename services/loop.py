"""``vlm loop``: the closed loop, run and measured on the local stack.

Two synthetic cameras stream through the served detector. One keeps the scenes the model
was trained on; the other drifts to a style no model has seen (``SceneSettings.drift``).
Results are scored live against the truth every frame carries. Frames the model is unsure
of are sampled to the to-label topic, synced into Label Studio, and annotated there from
the ground truth by :class:`services.labelstudio.TruthAnnotator` (a script standing in for
a person). Their labels reach the labels topic; the production model is fine-tuned on a
snapshot of them; the gate scores candidate and production on held-out scenes of both
domains; a promoted candidate reaches the running pipeline by hot swap. The report gives
the live accuracy in every phase, the labels used, the wall time, and the frames lost.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vlm_core.config import LocalSettings, Topics
from vlm_core.contracts.frame import Frame
from vlm_core.contracts.result import Result
from vlm_core.contracts.task import Task
from vlm_core.contracts.truth import FrameTruth
from vlm_core.datasets.scenes import SCENE_CLASSES, SceneStyle
from vlm_core.errors import InfrastructureError, VlmError
from vlm_core.registry import ModelRegistry
from vlm_core.stream.accuracy import AccuracyReading, LiveAccuracy, PhaseAccuracy

APP_NAME = "vlm-loop"
BASE_CAMERA = "steady"
DRIFT_CAMERA = "drifting"
#: Frames the monitor keeps waiting for their result (or results for their frame).
MAX_PENDING = 50_000


@dataclass(frozen=True)
class LoopSettings:
    """One run of the loop. The defaults are the measured run in the README (~25 min on
    two cores); the integration test shrinks every figure to check the plumbing."""

    drift: SceneStyle = SceneStyle.SMALL
    #: Frames per second of each camera.
    fps: float = 3.0
    #: Seconds of stream before the drifting camera drifts.
    before_s: float = 60.0
    #: Oracle labels of drifted frames to gather before fine-tuning.
    labels: int = 150
    #: At least this many seconds of drifted stream are scored before fine-tuning starts.
    min_drift_s: float = 60.0
    #: Seconds of stream scored after the swap.
    after_s: float = 90.0
    #: The production model, trained first where the registry has none.
    production_data: str = "scenes://?n=400"
    production_epochs: int = 4
    finetune_epochs: int = 4
    finetune_lr: float | None = None
    #: The fine-tune rehearses this many scenes of the production model's own training data.
    replay_samples: int = 200
    #: Ray Train workers: the production model trains alone on the machine, the fine-tune
    #: beside the running stream.
    production_workers: int = 2
    workers: int = 1
    #: Gate: better on the drifted domain by at least this, no worse on the old one by more
    #: than ``old_tolerance``; both scored on ``gate_scenes`` held-out scenes.
    new_min_gain: float = 0.0
    old_tolerance: float = 0.05
    gate_scenes: int = 200
    #: Active learning: a frame whose best box scores below this is sampled.
    score_threshold: float = 0.5
    max_per_minute: int = 90
    #: Serving: boxes below this score are not reported (mAP needs the low ones too).
    serve_score_threshold: float = 0.1
    items: int = 4
    #: A new item enters every this many frames, so the cameras see many objects.
    turnover: int = 10
    sync_interval_s: float = 3.0
    #: The registry; default: a fresh one for the run. The loop serves, fine-tunes and
    #: promotes ``model_name`` in it, training it first where it has no production version.
    registry: Path | None = None
    model_name: str = "loop-detector"
    timeout_s: float = 3600.0

    def cameras(self) -> dict[str, str]:
        common = f"width=320&height=240&items={self.items}&min_items={self.items}&turnover={self.turnover}"
        drift_after = round(self.before_s * self.fps)
        return {
            BASE_CAMERA: f"synthetic://?seed=21&{common}",
            DRIFT_CAMERA: f"synthetic://?seed=22&{common}&drift={self.drift.value}&drift_after={drift_after}",
        }

    def gate_domains(self) -> tuple[str, str]:
        scenes = f"scenes://?n={self.gate_scenes}&items={self.items}"
        return f"{scenes}&style={self.drift.value}", scenes


@dataclass
class Phase:
    """One camera, domain and model: its live accuracy over every frame it scored."""

    camera_id: str
    domain: str
    model: str
    map50: float | None
    frames: int


@dataclass
class LoopReport:
    settings: dict[str, Any]
    production: str = ""
    candidate: str = ""
    promoted: bool = False
    gate: list[dict[str, Any]] = field(default_factory=list)
    gate_reason: str = ""
    #: The acceptance figures (mAP@.5, live): drifting camera before the drift, after it,
    #: after the swap; the steady camera before and after the swap.
    before_drift: float | None = None
    after_drift: float | None = None
    after_swap: float | None = None
    old_before_swap: float | None = None
    old_after_swap: float | None = None
    phases: list[Phase] = field(default_factory=list)
    labels_used: int = 0
    labels_by_domain: dict[str, int] = field(default_factory=dict)
    studio_tasks: int = 0
    frames_sent: int = 0
    results: int = 0
    frames_without_result: int = 0
    duplicate_results: int = 0
    #: Seconds from the promotion to the first result of the new version.
    swap_s: float | None = None
    stages_s: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0

    @property
    def gain_on_drift(self) -> float | None:
        if self.after_swap is None or self.after_drift is None:
            return None
        return self.after_swap - self.after_drift

    @property
    def change_on_old(self) -> float | None:
        if self.old_after_swap is None or self.old_before_swap is None:
            return None
        return self.old_after_swap - self.old_before_swap

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["gain_on_drift"] = self.gain_on_drift
        doc["change_on_old"] = self.change_on_old
        return doc

    def lines(self) -> list[str]:
        def fmt(value: float | None) -> str:
            return "n/a" if value is None else f"{value:.3f}"

        domains = ", ".join(f"{d} {n}" for d, n in sorted(self.labels_by_domain.items()))
        return [
            f"drifting camera, mAP@.5: before the drift {fmt(self.before_drift)}, after it {fmt(self.after_drift)}, "
            f"after the swap {fmt(self.after_swap)} (gain {fmt(self.gain_on_drift)})",
            f"steady camera, mAP@.5: before the swap {fmt(self.old_before_swap)}, after it {fmt(self.old_after_swap)} "
            f"(change {fmt(self.change_on_old)})",
            f"labels used {self.labels_used} ({domains})"
            f"; gate {'promoted' if self.promoted else 'refused'} {self.candidate}: {self.gate_reason}",
            f"frames sent {self.frames_sent}, without a result {self.frames_without_result}, "
            f"duplicates {self.duplicate_results}; swap took {fmt(self.swap_s)} s; wall {self.wall_s:.0f} s "
            f"({', '.join(f'{k} {v:.0f} s' for k, v in self.stages_s.items())})",
        ]


class TruthMonitor(threading.Thread):
    """Joins every frame's truth with its result, by (camera, seq), from the run's own topics,
    and scores them: live (a window per camera) and by phase (camera, domain, model)."""

    def __init__(self, bootstrap: str, topics: Topics, task: Task = Task.DETECTION) -> None:
        super().__init__(name="loop-monitor", daemon=True)
        self.bootstrap, self.topics, self.task = bootstrap, topics, task
        self.live = LiveAccuracy(task)
        self.phases = PhaseAccuracy(task)
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self._truth: OrderedDict[tuple[str, int], FrameTruth] = OrderedDict()
        self._early: OrderedDict[tuple[str, int], Result] = OrderedDict()
        self._done: set[tuple[str, int]] = set()
        self.frames = self.results = self.duplicates = self.invalid = 0
        #: The first time a result of each model arrived (monotonic seconds).
        self.first_seen: dict[str, float] = {}
        self.error: str | None = None

    @property
    def pending(self) -> int:
        with self.lock:
            return len(self._truth)

    def run(self) -> None:
        from services.kafka_io import consumer

        try:
            reader = consumer(self.bootstrap, group_id=None)
            from kafka import TopicPartition

            partitions = [
                TopicPartition(topic, p)
                for topic in (self.topics.frames, self.topics.results)
                for p in sorted(reader.partitions_for_topic(topic) or [])
            ]
            reader.assign(partitions)
            reader.seek_to_beginning(*partitions)
            while not self.stop_event.is_set():
                for tp, records in reader.poll(timeout_ms=300, max_records=500).items():
                    for record in records:
                        self._handle(tp.topic, record)
            reader.close()
        except Exception as exc:  # shown in the report; the loop stops on it
            self.error = f"{type(exc).__name__}: {exc}"

    def _handle(self, topic: str, record: Any) -> None:
        try:
            if topic == self.topics.frames:
                frame = Frame.from_kafka(record.key, record.value, record.headers)
                self._on_frame((frame.camera_id, frame.seq), frame.truth)
            else:
                self._on_result(Result.from_bytes(record.value, validate=False))
        except (VlmError, ValueError, KeyError, TypeError):
            self.invalid += 1

    def _on_frame(self, key: tuple[str, int], truth: FrameTruth | None) -> None:
        with self.lock:
            self.frames += 1
            if truth is None or key in self._done:
                return
            early = self._early.pop(key, None)
            if early is not None:
                self._score(key, truth, early)
                return
            self._truth[key] = truth
            while len(self._truth) > MAX_PENDING:
                self._truth.popitem(last=False)

    def _on_result(self, result: Result) -> None:
        key = (result.camera_id, result.seq)
        with self.lock:
            self.results += 1
            if result.detection is not None:
                self.first_seen.setdefault(_model_of(result), time.monotonic())
            if key in self._done:
                self.duplicates += 1
                return
            truth = self._truth.pop(key, None)
            if truth is None:  # its frame is not read yet
                self._early[key] = result
                while len(self._early) > MAX_PENDING:
                    self._early.popitem(last=False)
                return
            self._score(key, truth, result)

    def _score(self, key: tuple[str, int], truth: FrameTruth, result: Result) -> None:
        self._done.add(key)
        self.live.add(result, truth)
        self.phases.add(result, truth)

    def reading(self, camera_id: str) -> AccuracyReading | None:
        with self.lock:
            return self.live.reading(camera_id)

    def phase(self, camera_id: str, domain: str, model: str) -> AccuracyReading | None:
        with self.lock:
            return self.phases.reading(camera_id, domain, model)

    def phase_table(self) -> list[Phase]:
        with self.lock:
            keys = list(self.phases.phases)
        out = []
        for camera, domain, model in sorted(keys):
            reading = self.phase(camera, domain, model)
            out.append(
                Phase(
                    camera, domain, model, None if reading is None else reading.value, reading.frames if reading else 0
                )
            )
        return out

    def stop(self) -> None:
        self.stop_event.set()
        self.join(10)


def _live_line(monitor: TruthMonitor) -> str:
    """The cameras' live mAP@.5 over their last frames, with the domains and models scored."""
    parts = []
    for camera in (BASE_CAMERA, DRIFT_CAMERA):
        r = monitor.reading(camera)
        if r is not None:
            parts.append(f"{camera} {r.value:.3f} ({'/'.join(r.domains)}, {'/'.join(r.models)})")
    return "live mAP@.5: " + (", ".join(parts) or "no results yet")


def _model_of(result: Result) -> str:
    model = result.detection.model if result.detection is not None else None
    return "" if model is None else f"{model.name}@{model.version}"


def pipeline_args(
    settings: LocalSettings, loop: LoopSettings, topics: Topics, registry: ModelRegistry, arch: str
) -> dict[str, Any]:
    from vlm_core.pipeline import model_pipeline_args

    return model_pipeline_args(
        settings.bootstrap_servers,
        topics,
        Task.DETECTION,
        {
            "spec": {"task": "detection", "arch": arch, "score_threshold": loop.serve_score_threshold},
            "registry_name": loop.model_name,
            # The replica follows the registry: a promotion reaches it within a second.
            "registry_poll_s": 1.0,
            "deployment": {"num_cpus": 0.5, "max_batch_size": 8, "torch_threads": 1},
        },
        processor={"group_id": f"loop-{uuid.uuid4().hex[:8]}", "batch_size": 8},
        active_learning={
            "enabled": True,
            "score_threshold": loop.score_threshold,
            "max_per_minute": loop.max_per_minute,
        },
        registry_dir=str(registry.root),
    )


class ClosedLoop:
    """Runs the loop once; ``say`` gets one line per step (the CLI prints them)."""

    def __init__(self, settings: LocalSettings, loop: LoopSettings, *, say: Callable[[str], None] = print) -> None:
        self.settings, self.loop, self.say = settings, loop, say
        run = uuid.uuid4().hex[:8]
        self.run_id = run
        from services.kafka_io import private_topics

        self.topics = private_topics(f"loop-{run}")
        self.dataset = f"loop-{run}"
        root = loop.registry or settings.state_dir / "loop" / run / "registry"
        self.registry = ModelRegistry(root)
        self.report = LoopReport(settings=_settings_doc(loop))
        self._stage_started = time.monotonic()

    def _stage(self, name: str) -> None:
        now = time.monotonic()
        self.report.stages_s[name] = round(now - self._stage_started, 1)
        self._stage_started = now

    # -- the run ------------------------------------------------------------------------
    def run(self, *, view_port: int | None = None) -> LoopReport:
        from services import kafka_io
        from services.inference import deploy
        from services.localstack import LocalStack

        started = time.monotonic()
        stack = LocalStack(self.settings)
        stack.up(["kafka", "ray", "labelstudio"])
        kafka_io.ensure_pipeline_topics(self.settings.bootstrap_servers, self.topics, partitions=2)
        kafka_io.ensure_topics(
            self.settings.bootstrap_servers,
            [kafka_io.TopicSpec(self.topics.to_label, 1), kafka_io.TopicSpec(self.topics.labels, 1, compact=True)],
        )
        self._stage("stack")
        production = self._production()
        self.report.production = production.ref
        self._stage("production_training")
        deploy.connect(self.settings.ray_address)
        deploy.deploy(
            pipeline_args(self.settings, self.loop, self.topics, self.registry, production.arch), app_name=APP_NAME
        )
        self._stage("deploy")
        monitor = TruthMonitor(self.settings.bootstrap_servers, self.topics)
        monitor.start()
        view = self._start_view(view_port)
        runner = self._ingest()
        try:
            self._label_until_ready(monitor, runner)
            self._stage("stream_and_labelling")
            decision = self._finetune(production)
            self._stage("finetune_and_gate")
            promoted_at = time.monotonic()
            if decision.promoted:
                self._measure_after_swap(monitor, decision.candidate.ref, promoted_at)
            self._stage("after_swap")
        finally:
            runner.stop()
            self._drain(monitor, sent=sum(w.stats.sent for w in runner.workers))
            monitor.stop()
            if view is not None:
                view.stop()
            deploy.delete(APP_NAME)
        self._fill_report(monitor, production.ref, runner)
        self.report.wall_s = round(time.monotonic() - started, 1)
        return self.report

    def _production(self) -> Any:
        from services.trainer.job import TrainRequest, run_training

        production = self.registry.production(self.loop.model_name)
        if production is not None:
            self.say(f"production model: {production.ref} (from {self.registry.root})")
            return production
        self.say(
            f"training the production detector on {self.loop.production_data} ({self.loop.production_epochs} epochs)"
        )
        request = TrainRequest(
            task=Task.DETECTION,
            data=self.loop.production_data,
            epochs=self.loop.production_epochs,
            workers=self.loop.production_workers,
            name=self.loop.model_name,
            promote=True,
        ).resolved()
        outcome = run_training(
            request,
            ray_address=self.settings.ray_address,
            registry_dir=self.registry.root,
            storage=self.settings.state_dir / "loop" / self.run_id / "train",
            on_progress=self._progress,
        )
        self.say(f"production {outcome.version.ref}: mAP@.5 {outcome.metrics.get('map50', 0):.3f} on held-out scenes")
        return outcome.version

    def _progress(self, event: dict[str, Any]) -> None:
        if event.get("event") == "epoch":
            figures = ", ".join(f"{k} {v:.3f}" for k, v in event.items() if isinstance(v, float))
            self.say(f"  epoch {event.get('epoch')}: {figures}")
        elif event.get("event") == "evaluate":
            self.say(f"  {event.get('text')}")

    def _start_view(self, port: int | None) -> Any:
        from services.view import LiveHub, ViewServer, ViewSettings
        from vlm_core.pipeline import CameraRouting

        if port is None:
            return None
        settings = ViewSettings(host=self.settings.host, port=port)
        try:
            view = ViewServer(LiveHub(self.settings.bootstrap_servers, self.topics, CameraRouting()), settings).start()
        except InfrastructureError as exc:
            self.say(f"the live view did not start ({exc}); the loop goes on without it")
            return None
        self.say(f"live view: {settings.url}")
        return view

    def _ingest(self) -> Any:
        from services.ingest.worker import CameraConfig, IngestRunner

        cameras = [CameraConfig(camera, uri, fps=self.loop.fps) for camera, uri in self.loop.cameras().items()]
        runner = IngestRunner(cameras, self.settings.bootstrap_servers, self.topics.frames)
        runner.start()
        self.say(
            f"streaming {len(cameras)} cameras at {self.loop.fps:g} fps; {DRIFT_CAMERA} drifts to "
            f"'{self.loop.drift.value}' after {self.loop.before_s:g} s"
        )
        return runner

    def _label_until_ready(self, monitor: TruthMonitor, runner: Any) -> None:
        from services.labelstudio import AnnotateReport, StudioAccess, StudioSync, TruthAnnotator

        access = StudioAccess.resolve(None, None, self.settings)
        client = access.client()
        sync = StudioSync(
            client,
            bootstrap=self.settings.bootstrap_servers,
            topics=self.topics,
            dataset=self.dataset,
            task=Task.DETECTION,
            class_names=SCENE_CLASSES,
        )
        oracle = TruthAnnotator(client, bootstrap=self.settings.bootstrap_servers, task=Task.DETECTION)
        annotated = AnnotateReport()
        published = 0
        drift_frames_needed = round(self.loop.min_drift_s * self.loop.fps)
        deadline = time.monotonic() + self.loop.timeout_s
        drift = self.loop.drift.value
        while True:
            if monitor.error:
                raise InfrastructureError(f"the accuracy monitor failed: {monitor.error}")
            if time.monotonic() > deadline:
                raise InfrastructureError(
                    f"the loop gathered {annotated.by_domain.get(drift, 0)} of {self.loop.labels} drifted labels "
                    f"within {self.loop.timeout_s:g} s",
                    hint="lower --labels, raise --timeout, or raise the sampling threshold",
                )
            report = sync.sync()
            published += report.labels_published
            annotated.add(oracle.annotate(report.project_id))
            drifted = sum(p.frames for p in monitor.phase_table() if p.camera_id == DRIFT_CAMERA and p.domain == drift)
            self.say(
                f"{_live_line(monitor)}; labels published {published}, annotated "
                f"{', '.join(f'{d} {n}' for d, n in sorted(annotated.by_domain.items())) or 'none'} "
                f"(fine-tuning at {self.loop.labels} {drift})"
            )
            if annotated.by_domain.get(drift, 0) >= self.loop.labels and drifted >= drift_frames_needed:
                break
            time.sleep(self.loop.sync_interval_s)
        # The last annotations are published by one more sync.
        published += sync.sync().labels_published
        self.report.labels_by_domain = dict(annotated.by_domain)
        self.report.studio_tasks = len(client.tasks(report.project_id))

    def _finetune(self, production: Any) -> Any:
        from services.labels import resolve_data
        from services.trainer.job import GateDomain, TrainRequest, run_training

        data, snapshot = resolve_data(
            f"labels://{self.dataset}",
            Task.DETECTION,
            bootstrap=self.settings.bootstrap_servers,
            topic=self.topics.labels,
            root=self.settings.datasets_dir,
        )
        self.report.labels_used = 0 if snapshot is None else snapshot.samples
        new_domain, old_domain = self.loop.gate_domains()
        self.say(f"fine-tuning {production.ref} on {self.report.labels_used} labels ({data})")
        request = TrainRequest(
            task=Task.DETECTION,
            data=data,
            arch=production.arch,
            init=str(self.registry.weights_path(production)),
            epochs=self.loop.finetune_epochs,
            lr=self.loop.finetune_lr,
            workers=self.loop.workers,
            name=self.loop.model_name,
            promote=True,
            replay=self.loop.production_data,
            replay_samples=self.loop.replay_samples,
            gates=(
                GateDomain(self.loop.drift.value, self.loop.new_min_gain, new_domain),
                GateDomain("base", -self.loop.old_tolerance, old_domain),
            ),
        ).resolved()
        outcome = run_training(
            request,
            ray_address=self.settings.ray_address,
            registry_dir=self.registry.root,
            storage=self.settings.state_dir / "loop" / self.run_id / "train",
            on_progress=self._progress,
        )
        decision = outcome.decision
        self.report.candidate = outcome.version.ref
        self.report.promoted = decision.promoted
        self.report.gate = [check.to_json() for check in decision.checks]
        self.report.gate_reason = decision.reason
        self.say(f"gate: {'promoted' if decision.promoted else 'refused'} {outcome.version.ref}: {decision.reason}")
        return decision

    def _measure_after_swap(self, monitor: TruthMonitor, candidate: str, promoted_at: float) -> None:
        deadline = promoted_at + self.loop.timeout_s
        while candidate not in monitor.first_seen:
            if time.monotonic() > deadline:
                raise InfrastructureError(f"no result of {candidate} arrived after its promotion")
            time.sleep(0.2)
        self.report.swap_s = round(monitor.first_seen[candidate] - promoted_at, 2)
        self.say(f"hot swap: the first result of {candidate} came {self.report.swap_s:.1f} s after the promotion")
        end = time.monotonic() + self.loop.after_s
        while time.monotonic() < end:
            time.sleep(min(10.0, max(0.0, end - time.monotonic())))
            self.say(_live_line(monitor))

    def _drain(self, monitor: TruthMonitor, sent: int, timeout_s: float = 180.0) -> None:
        """Wait until the monitor has read all ``sent`` frames and every one has its result
        (or the timeout): what is left is lost. Nothing pending is not enough on its own:
        the last frames sent may not have been read yet."""
        deadline = time.monotonic() + timeout_s
        while (monitor.pending or monitor.frames < sent) and time.monotonic() < deadline and monitor.error is None:
            time.sleep(0.5)

    def _fill_report(self, monitor: TruthMonitor, production: str, runner: Any) -> None:
        report, drift = self.report, self.loop.drift.value
        candidate = report.candidate if report.promoted else None

        def value(camera: str, domain: str, model: str | None) -> float | None:
            reading = monitor.phase(camera, domain, model) if model else None
            return None if reading is None else reading.value

        report.before_drift = value(DRIFT_CAMERA, "base", production)
        report.after_drift = value(DRIFT_CAMERA, drift, production)
        report.after_swap = value(DRIFT_CAMERA, drift, candidate)
        report.old_before_swap = value(BASE_CAMERA, "base", production)
        report.old_after_swap = value(BASE_CAMERA, "base", candidate)
        report.phases = monitor.phase_table()
        report.frames_sent = sum(w.stats.sent for w in runner.workers)
        report.results = monitor.results
        report.frames_without_result = monitor.pending
        report.duplicate_results = monitor.duplicates


def _settings_doc(loop: LoopSettings) -> dict[str, Any]:
    doc = asdict(loop)
    doc["drift"] = loop.drift.value
    doc["registry"] = None if loop.registry is None else str(loop.registry)
    return doc


def write_report(report: LoopReport, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.to_json(), indent=2, default=str) + "\n")
