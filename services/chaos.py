"""Faults injected mid-stream into the real stack, and what they cost: ``vlm chaos`` and the
``faults`` tests run the same scenarios.

A scenario deploys a private pipeline (a small classifier) on fresh topics, streams a known
set of (camera, seq) through the real ingest workers at a fixed rate, injects one fault once
results flow, and reads every result back as a ``read_committed`` reader. It reports the
frames that never got a result, the results seen twice, the time to recovery (the longest
pause between results around the fault) and whether anyone had to act: a scenario that
does more than inject its fault (and restart what the fault names) fails instead.
"""

from __future__ import annotations

import contextlib
import enum
import itertools
import json
import os
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from services.localstack.stack import RayWorkerService, process_tree
from vlm_core.buffering import BufferPolicy
from vlm_core.config import LocalSettings
from vlm_core.contracts.task import Task
from vlm_core.errors import ConfigError, InfrastructureError
from vlm_core.pipeline import Delivery, model_pipeline_args

#: A small classifier: the faults are about delivery, not about the model's speed.
CHAOS_MODEL = {
    "spec": {
        "task": "classification",
        "arch": "mobilenet_v3_small",
        "class_names": ["a", "b", "c"],
        "input_size": 64,
        "name": "chaos-classifier",
        "version": "1",
    },
    "deployment": {"num_cpus": 0.25, "max_ongoing_requests": 8, "max_batch_size": 16},
}


#: A Ray resource only the head node has.
HEAD_RESOURCE = "node:__internal_head__"


class Fault(str, enum.Enum):
    #: SIGKILL of the broker that leads the frames partitions, then a restart.
    BROKER_KILL = "broker_kill"
    #: SIGKILL of the processor replica's process (Serve starts another).
    PROCESSOR_KILL = "processor_kill"
    #: SIGKILL of a model replica's process.
    MODEL_KILL = "model_kill"
    #: The second Ray node is lost; its model replicas are rescheduled.
    RAY_NODE_LOSS = "ray_node_loss"
    #: Every broker down for 20 s while ingest runs, then back.
    BROKER_OUTAGE = "broker_outage"
    #: Each broker stopped and started again in turn.
    ROLLING_RESTART = "rolling_restart"
    #: The Serve application redeployed with a changed config.
    SERVE_REDEPLOY = "serve_redeploy"

    @property
    def needs_brokers(self) -> int:
        return 3 if self in (Fault.BROKER_KILL, Fault.ROLLING_RESTART) else 1

    @property
    def needs_ray_nodes(self) -> int:
        return 2 if self is Fault.RAY_NODE_LOSS else 1

    def runs_on(self, settings: LocalSettings) -> bool:
        return self.needs_brokers <= settings.kafka_brokers and self.needs_ray_nodes <= settings.ray_nodes


@dataclass
class FaultOutcome:
    fault: str
    delivery: str
    frames: int
    results: int
    missing: int
    duplicates: int
    recovery_s: float
    manual_action: bool
    brokers: int
    detail: str = ""
    ingest: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """What the fault suite requires: nothing lost, nobody acting, and under exactly
        once nothing seen twice."""
        return (
            self.missing == 0
            and not self.manual_action
            and (self.duplicates == 0 or self.delivery == Delivery.AT_LEAST_ONCE.value)
        )


@dataclass(frozen=True)
class ChaosSettings:
    cameras: int = 2
    per_camera: int = 400
    fps: float = 20.0
    #: Results produced before the fault is injected.
    results_before_fault: int = 150
    outage_s: float = 20.0
    #: How long the results may take to be complete after ingest finished.
    settle_timeout_s: float = 240.0


class _ResultReader(threading.Thread):
    """Follows the results topic (``read_committed``) from its beginning."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(name="chaos-results", daemon=True)
        self.bootstrap, self.topic = bootstrap, topic
        self.keys: list[tuple[str, int]] = []
        self.arrivals: list[float] = []
        self.lock = threading.Lock()
        self.stop_event = threading.Event()

    def run(self) -> None:
        from services.kafka_io import follow_topic

        def on_records(records: list[Any]) -> None:
            now = time.monotonic()
            with self.lock:
                for rec in records:
                    doc = json.loads(rec.value)
                    self.keys.append((doc["camera_id"], int(doc["seq"])))
                    self.arrivals.append(now)

        follow_topic(self.bootstrap, self.topic, on_records, self.stop_event, from_beginning=True, poll_ms=200)

    def count(self) -> int:
        with self.lock:
            return len(self.keys)


def run_fault(
    fault: Fault,
    delivery: Delivery,
    *,
    settings: LocalSettings,
    options: ChaosSettings = ChaosSettings(),
    progress: Callable[[str], None] = print,
) -> FaultOutcome:
    """One fault under one delivery mode against the running local stack."""
    from services import kafka_io
    from services.inference import deploy
    from services.ingest.worker import CameraConfig, IngestRunner
    from services.localstack import LocalStack

    stack = LocalStack(settings)
    if settings.kafka_brokers < fault.needs_brokers:
        raise ConfigError(
            f"{fault.value} needs a {fault.needs_brokers}-broker cluster; this stack has {settings.kafka_brokers}",
            hint="start one with `vlm local up --brokers 3` (its own VLM_STATE_DIR)",
        )
    if settings.ray_nodes < fault.needs_ray_nodes:
        raise ConfigError(
            f"{fault.value} needs a second Ray node; this stack has {settings.ray_nodes}",
            hint="start one with `vlm local up --ray-nodes 2`",
        )
    bootstrap = settings.bootstrap_servers
    tag = uuid.uuid4().hex[:8]
    topics = kafka_io.private_topics(f"chaos.{tag}")
    names = kafka_io.ensure_pipeline_topics(bootstrap, topics)
    app = f"chaos-{tag}"
    model, placement = CHAOS_MODEL, {}
    if fault is Fault.RAY_NODE_LOSS:
        # Two model replicas, which Serve spreads over the two nodes; the processor stays on
        # the head, so the node that goes takes a model replica and nothing else.
        model = {**CHAOS_MODEL, "deployment": {**CHAOS_MODEL["deployment"], "min_replicas": 2, "max_replicas": 2}}
        placement = {"ray_resources": {HEAD_RESOURCE: 0.001}}
    args = model_pipeline_args(
        bootstrap,
        topics,
        Task.CLASSIFICATION,
        model,
        processor={
            "group_id": f"chaos-{tag}",
            "batch_size": 8,
            "poll_timeout_ms": 50,
            "num_cpus": 0.25,
            "delivery": delivery.value,
            **placement,
        },
    )
    cameras = [f"chaos-cam-{i}" for i in range(options.cameras)]
    expected = {(c, s) for c in cameras for s in range(options.per_camera)}
    deploy.connect(settings.ray_address)
    progress(f"{fault.value} / {delivery.value}: deploying {app} on {bootstrap}")
    try:
        deploy.deploy(args, app_name=app, wait_s=240)
    except BaseException:
        deploy.delete(app)
        kafka_io.delete_topics(bootstrap, names)
        raise
    reader = _ResultReader(bootstrap, topics.results)
    reader.start()
    runner = IngestRunner(
        [
            CameraConfig(
                camera,
                f"synthetic://?seed={i}&width=96&height=64",
                fps=options.fps,
                max_width=None,
                max_frames=options.per_camera,
                buffer_frames=4 * options.per_camera,
                buffer_policy=BufferPolicy.BLOCK,
            )
            for i, camera in enumerate(cameras)
        ],
        bootstrap,
        topics.frames,
    )
    runner.start()
    injected_at = time.monotonic()
    detail = ""
    healed = False
    try:
        deadline = time.monotonic() + 120
        while reader.count() < options.results_before_fault:
            if time.monotonic() > deadline:
                raise InfrastructureError(f"no results from {app} before the fault ({reader.count()})")
            time.sleep(0.2)
        progress(f"  {reader.count()} results; injecting {fault.value}")
        injected_at = time.monotonic()
        detail = _inject(fault, stack, app, args, options, progress)
        if not runner.wait(timeout=options.settle_timeout_s):
            detail += f"; ingest still held {runner.buffered()} frames"
        deadline = time.monotonic() + options.settle_timeout_s
        while len(set(reader.keys) & expected) < len(expected) and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(2.0)  # a surplus (duplicates) arrives too
        healed = _running_within(app, HEAL_TIMEOUT_S)
    finally:
        runner.stop()
        reader.stop_event.set()
        reader.join(10)
        try:
            deploy.delete(app)
        finally:
            kafka_io.delete_topics(bootstrap, names)
            if fault is Fault.RAY_NODE_LOSS:  # the node comes back for the next scenario
                stack.services[RayWorkerService.name].stop()
                stack.services[RayWorkerService.name].start()
    seen = Counter(reader.keys)
    missing = len(expected - set(seen))
    outcome = FaultOutcome(
        fault=fault.value,
        delivery=delivery.value,
        frames=len(expected),
        results=sum(seen.values()),
        missing=missing,
        duplicates=sum(n - 1 for n in seen.values() if n > 1),
        recovery_s=round(_longest_pause(reader.arrivals, injected_at), 2),
        # Nobody acted during the run; had the stream not healed by itself (frames still
        # without a result after the settle time, or the application not RUNNING), someone
        # would have to.
        manual_action=bool(missing) or not healed,
        brokers=settings.kafka_brokers,
        detail=detail,
        ingest={
            "sent": sum(w.stats.sent for w in runner.workers),
            "dropped": sum(w.stats.dropped for w in runner.workers),
            "retried": sum(w.stats.retried for w in runner.workers),
        },
    )
    progress(
        f"  {fault.value} / {delivery.value}: missing {outcome.missing}, duplicates {outcome.duplicates}, "
        f"recovery {outcome.recovery_s:.1f}s ({detail})"
    )
    return outcome


#: Serve replaces a replica that crash-looped through the fault on its own: the application
#: is given this long to be RUNNING again before someone would have to act.
HEAL_TIMEOUT_S = 90.0


def _running_within(app: str, timeout_s: float) -> bool:
    from services.inference import deploy

    deadline = time.monotonic() + timeout_s
    while deploy.app_status(app) != "RUNNING":
        if time.monotonic() > deadline:
            return False
        time.sleep(1.0)
    return True


def _longest_pause(arrivals: list[float], since: float) -> float:
    """The longest gap between results from the fault on: how long the stream stood."""
    times = [since, *sorted(t for t in arrivals if t >= since)]
    return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


# -- the faults --------------------------------------------------------------------------------
def _inject(
    fault: Fault,
    stack: Any,
    app: str,
    args: dict[str, Any],
    options: ChaosSettings,
    progress: Callable[[str], None],
) -> str:
    if fault is Fault.PROCESSOR_KILL:
        from services.inference.deploy import processor_stats

        pid = processor_stats(app).pid
        os.kill(pid, signal.SIGKILL)
        return f"processor pid {pid} killed"
    if fault is Fault.MODEL_KILL:
        from services.inference.deploy import model_replica_pid

        pid = model_replica_pid(app, Task.CLASSIFICATION)
        os.kill(pid, signal.SIGKILL)
        return f"model replica pid {pid} killed"
    if fault is Fault.SERVE_REDEPLOY:
        from services.inference import deploy

        # A changed processor config: Serve replaces the processor replica, whose partitions
        # are revoked (drained and committed) and taken over by the new one.
        changed = {
            **args,
            "processor": {**args["processor"], "poll_timeout_ms": args["processor"]["poll_timeout_ms"] + 1},
        }
        deploy.deploy(changed, app_name=app, wait_s=240)
        return "redeployed with processor.poll_timeout_ms changed"
    if fault is Fault.RAY_NODE_LOSS:
        node = stack.services[RayWorkerService.name]
        pid = node.pid()
        if pid is None:
            raise InfrastructureError("the second Ray node is not running", hint="`vlm local up --ray-nodes 2`")
        replicas = _model_replicas_on(pid, app)
        for process in process_tree(pid):  # the raylet, its agents and every worker on it
            with contextlib.suppress(ProcessLookupError):
                os.kill(process, signal.SIGKILL)
        return f"{node.name} (pid {pid}, model replica pid(s) {replicas}) lost"
    if fault is Fault.BROKER_KILL:
        broker = _leader_of_frames(stack, app)
        _kill(broker)
        time.sleep(10)
        _restart(broker)
        return f"{broker.name} (leader of the frames partitions) killed, restarted after 10 s"
    if fault is Fault.BROKER_OUTAGE:
        for broker in stack.brokers:
            _kill(broker)
        time.sleep(options.outage_s)
        for broker in stack.brokers:
            broker.stop()  # the PID files of the dead processes
            broker.start(wait=False)
        for broker in stack.brokers:
            broker.wait_healthy()
        return f"every broker down {options.outage_s:.0f} s"
    if fault is Fault.ROLLING_RESTART:
        for broker in stack.brokers:
            progress(f"  restarting {broker.name}")
            broker.stop()
            broker.start()
            time.sleep(5)  # its partitions catch up before the next one goes
        return f"{len(stack.brokers)} brokers restarted in turn"
    raise ConfigError(f"no injector for {fault.value}")


def _kill(broker: Any) -> None:
    pid = broker.pid()
    if pid is None:
        raise InfrastructureError(f"{broker.name} is not running")
    os.kill(pid, signal.SIGKILL)


def _restart(broker: Any) -> None:
    broker.stop()  # removes the dead process's PID file
    broker.start()


def _leader_of_frames(stack: Any, app: str) -> Any:
    """The broker leading most partitions of the app's frames topic."""
    from services import kafka_io

    client = kafka_io.admin(stack.settings.bootstrap_servers)
    try:
        frames = f"chaos.{app.removeprefix('chaos-')}.frames"
        (topic,) = client.describe_topics([frames])
        leaders = Counter(p.get("leader_id", p.get("leader")) for p in topic["partitions"])
    finally:
        client.close()
    node = leaders.most_common(1)[0][0]
    return stack.services["kafka" if node == 1 else f"kafka-{node}"]


def _model_replicas_on(node_pid: int, app: str, timeout_s: float = 60.0) -> list[int]:
    """The app's model replicas running on the node started as ``node_pid`` (Ray titles a
    replica's process ``ray::ServeReplica:<app>:<deployment>``)."""
    from vlm_core.tasks import get_profile

    title = f"ServeReplica:{app}:{get_profile(Task.CLASSIFICATION).deployment_name}".encode()
    deadline = time.monotonic() + timeout_s
    while True:
        found = []
        for pid in process_tree(node_pid):
            with contextlib.suppress(OSError):
                if title in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.append(pid)
        if found:
            return found
        if time.monotonic() > deadline:
            raise InfrastructureError(f"no model replica of {app} on the second Ray node after {timeout_s:.0f}s")
        time.sleep(1.0)


# -- the matrix --------------------------------------------------------------------------------
@dataclass
class ChaosReport:
    outcomes: list[FaultOutcome]
    command: str = ""

    def table(self) -> list[dict[str, Any]]:
        return [asdict(o) for o in self.outcomes]


def run_matrix(
    faults: list[Fault],
    deliveries: list[Delivery],
    *,
    settings: LocalSettings,
    options: ChaosSettings = ChaosSettings(),
    progress: Callable[[str], None] = print,
    command: str = "",
) -> ChaosReport:
    outcomes = []
    for fault in faults:
        for delivery in deliveries:
            outcomes.append(run_fault(fault, delivery, settings=settings, options=options, progress=progress))
    return ChaosReport(outcomes, command)


def write_report(report: ChaosReport, path: Path | None) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"command": report.command, "outcomes": report.table()}, indent=2) + "\n")
