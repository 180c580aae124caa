"""The StreamProcessor Serve deployment: a consumer-group member running the processor loop."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from services.inference.ray_metrics import RayMetricsSink
from services.kafka_io.adapters import KafkaFrameConsumer, KafkaResultProducer, KafkaTransactions
from services.kafka_io.state import KafkaTrackStateStore
from vlm_core import metrics as m
from vlm_core.contracts.frame import Frame
from vlm_core.contracts.task import Task
from vlm_core.cpu import lower_priority, name_thread, no_huge_pages
from vlm_core.errors import FrameError
from vlm_core.pipeline import Delivery, DeploymentSettings, PipelineConfig
from vlm_core.stream import BatchTiming, ModelClient, RestartWindow, StreamProcessor, TrackingStage, kafka_sinks
from vlm_core.stream.collector import watch_collections
from vlm_core.stream.profile import StageProfile, StageTotals

if TYPE_CHECKING:
    from services.inference.model_server import ModelServer
    from vlm_core.models import ModelSpec
    from vlm_core.registry import RegistryFollow

log = logging.getLogger("ray.serve")


def model_client(handle: Any) -> ModelClient:
    """A model deployment's ``predict`` handle as the processor's ModelClient: one request
    per batch of frames."""

    def send(inputs: Sequence[np.ndarray | Frame]) -> _Response:
        return _Response(handle.remote(inputs))

    return send


class _Response:
    """A model request. Its answer, outputs or error, is fetched from the object store
    once: the processor asks with ``timeout=0`` whether a batch is answered, then reads it.

    Asking does not go to the object store: the request's ObjectRef (Serve's developer
    API ``_to_object_ref_sync``), once a replica has the request, gives a future that Ray
    completes when the answer is in, and ``timeout=0`` reads that. The processor asks
    after every poll, for every batch in flight; a ``ray.get`` with a zero timeout for
    each took about a sixth of its thread's samples at a paced 80 fps (a one-off py-spy profile)."""

    def __init__(self, response: Any) -> None:
        self.response = response
        self._outputs: Any = None
        self._error: BaseException | None = None
        self._answered = False
        self._done: Future[Any] | None = None

    def result(self, timeout: float | None = None) -> Any:
        if not self._answered:
            if timeout == 0 and not self._ready():
                raise TimeoutError("the model has not answered yet")
            self._fetch(timeout)
        if self._error is not None:
            raise self._error
        return self._outputs

    def _ready(self) -> bool:
        if self._done is None:
            try:
                ref = self.response._to_object_ref_sync(_timeout_s=0)
            except TimeoutError:  # not at a replica yet
                return False
            except Exception:  # what went wrong, _fetch reads and keeps
                return True
            self._done = ref.future()
        return self._done.done()

    def _fetch(self, timeout: float | None) -> None:
        from ray.exceptions import RayTaskError

        try:
            self._outputs = self.response.result(timeout_s=timeout)
        except TimeoutError:  # not answered yet (ray's GetTimeoutError is one too)
            raise
        except RayTaskError as exc:  # a frame the replica could not decode: its own error
            self._error = exc.cause if isinstance(exc.cause, FrameError) else exc
        except Exception as exc:
            self._error = exc
        self._answered = True


@dataclass(frozen=True)
class HostedModel:
    """A model the processor replica holds in its own process (``model_hosting:
    processor``): what a model deployment's replica is built from."""

    spec: ModelSpec
    settings: DeploymentSettings
    follow: RegistryFollow | None = None


@dataclass(frozen=True)
class ProcessorStats:
    """What a processor replica reports (``vlm_core`` counters included), for the demo,
    the bench and the tests."""

    actor_name: str
    pid: int
    results_produced: int
    mean_batch_size: float
    mean_model_round_trip_ms: float
    error: str
    uptime_s: float
    loop_restarts: int
    rss_mb: float
    peak_rss_mb: float
    counters: list[m.CounterSample] = field(default_factory=list)
    #: Cameras with tracker state in this replica, and the size of that state encoded.
    tracked_cameras: int = 0
    tracker_state_bytes: int = 0
    #: Wall and CPU seconds by stage since the replica started (the bench's stage table).
    stages: dict[str, StageTotals] = field(default_factory=dict)


class StreamProcessorReplica:
    """Runs :class:`vlm_core.stream.StreamProcessor` on a background thread.

    Several replicas share the consumer group, so Kafka spreads the partitions over them;
    more replicas than partitions leaves the extra ones idle.
    """

    def __init__(
        self, config: PipelineConfig, models: dict[Task, Any], hosted: dict[Task, HostedModel] | None = None
    ) -> None:
        import cv2

        cv2.setNumThreads(1)
        no_huge_pages()
        kafka_log = logging.getLogger("kafka")
        kafka_log.setLevel(os.environ.get("VLM_KAFKA_LOG_LEVEL", "WARNING"))
        library_log = logging.getLogger("vlm_core")
        library_log.setLevel(logging.INFO)
        for handler in log.handlers:  # route library and client logs into the replica's log
            kafka_log.addHandler(handler)
            library_log.addHandler(handler)
        self.config = config
        self.profile = StageProfile()
        watch_collections(self.profile)
        # Models held here load first: their infer threads start now, and keep the
        # replica's priority while every other thread yields to them. (Imported here: a
        # processor that calls model deployments loads no torch.)
        if hosted:
            from services.inference.model_server import ModelServer
        self.hosted: dict[Task, ModelServer] = {
            task: ModelServer(model.spec, model.settings, model.follow, config.processor.batch_size)
            for task, model in (hosted or {}).items()
        }
        lower_priority(
            self.config.processor.niceness, keep={server.forward_thread_id for server in self.hosted.values()}
        )
        self.handles = {task: handle.options(method_name="predict") for task, handle in models.items()}
        self.metrics = RayMetricsSink()
        self.stop_event = threading.Event()
        self.processor: StreamProcessor | None = None
        self.error = ""
        self.started = time.time()
        settings = self.config.processor
        self.restarts = RestartWindow(settings.max_loop_restarts, settings.restart_window_s)
        self.thread = threading.Thread(target=self._run, name="stream-processor", daemon=True)
        self.thread.start()

    def _client(self, task: Task) -> ModelClient:
        return self.hosted[task].submit if task in self.hosted else model_client(self.handles[task])

    @property
    def tasks(self) -> list[Task]:
        return [*self.handles, *self.hosted]

    def _run(self) -> None:
        name_thread()
        cfg = self.config
        while not self.stop_event.is_set():
            consumer = producer = None
            exactly_once = cfg.processor.delivery is Delivery.EXACTLY_ONCE
            try:
                producer = KafkaResultProducer(
                    cfg.bootstrap,
                    transactional_id=self.transactional_id() if exactly_once else None,
                    transaction_timeout_ms=cfg.processor.transaction_timeout_ms,
                )
                tracking = state_store = None
                if cfg.cameras.tracked:
                    tracking = TrackingStage(cfg.cameras, metrics=self.metrics)
                    state_store = KafkaTrackStateStore(
                        cfg.bootstrap, cfg.topics.tracks_state, cfg.topics.frames, producer
                    )
                consumer = KafkaFrameConsumer(
                    cfg.bootstrap,
                    cfg.topics.frames,
                    cfg.processor.group_id,
                    on_revoke=self._drain,
                    fetch_max_wait_ms=cfg.processor.fetch_max_wait_ms,
                )
                self.processor = StreamProcessor.from_settings(
                    consumer,
                    {task: self._client(task) for task in self.tasks},
                    cfg.cameras,
                    kafka_sinks(producer, cfg.topics, active_learning=cfg.active_learning, metrics=self.metrics),
                    cfg.processor,
                    metrics=self.metrics,
                    profile=self.profile,
                    tracking=tracking,
                    state_store=state_store,
                    transactions=(
                        KafkaTransactions(producer, consumer, timeout_s=cfg.processor.produce_timeout_s)
                        if exactly_once
                        else None
                    ),
                )
                self.error = ""
                self.processor.run(self.stop_event.is_set)
            except Exception as exc:  # keep the replica alive; reconnect after a pause
                self.error = f"{type(exc).__name__}: {exc}"
                self.restarts.record()
                try:
                    self.metrics.inc(m.LOOP_RESTARTS)
                except Exception:
                    log.exception("counting the loop restart failed")
                log.exception("stream processor loop failed (restart %d); restarting in 2s", self.restarts.total)
                self.stop_event.wait(2.0)
            finally:
                for client in (consumer, producer):
                    if client is not None:
                        try:
                            client.close()
                        except Exception:
                            log.exception("closing Kafka client failed")

    def transactional_id(self) -> str:
        """Stable per replica slot: Serve gives a replacement replica the rank of the one it
        replaces, so the new producer fences the dead one's and its open transaction is
        aborted at once instead of after ``transaction_timeout_ms``."""
        from ray import serve

        context = serve.get_replica_context()
        rank = getattr(context, "rank", None)
        slot = getattr(rank, "rank", None)
        suffix = str(slot) if isinstance(slot, int) else context.replica_id.unique_id
        return f"{self.config.processor.group_id}.{context.app_name}.{suffix}"

    def _drain(self) -> None:
        if self.processor is not None:
            self.processor.drain()

    def check_health(self) -> None:
        """Serve replaces a replica whose health check raises: a dead loop thread, or a
        loop that keeps failing (a crash loop must not pass as healthy)."""
        if not self.thread.is_alive():
            raise RuntimeError(f"stream processor thread died: {self.error}")
        if self.restarts.crash_looping():
            raise RuntimeError(
                f"stream processor loop restarted {self.restarts.recent()} times in "
                f"{self.restarts.window_s:.0f}s; last error: {self.error}"
            )

    def stats(self) -> ProcessorStats:
        import ray

        processor = self.processor
        tracking = processor.tracking if processor else None
        memory = _proc_status_mb("VmRSS", "VmHWM")
        return ProcessorStats(
            actor_name=ray.get_runtime_context().get_actor_name() or "",
            pid=os.getpid(),
            results_produced=processor.results_produced if processor else 0,
            mean_batch_size=self._mean(m.MODEL_BATCH_SIZE),
            mean_model_round_trip_ms=1000 * self._mean(m.MODEL_LATENCY),
            error=self.error,
            uptime_s=time.time() - self.started,
            loop_restarts=self.restarts.total,
            rss_mb=memory["VmRSS"],
            peak_rss_mb=memory["VmHWM"],
            counters=self.metrics.counter_samples(),
            tracked_cameras=len(tracking.cameras) if tracking else 0,
            tracker_state_bytes=tracking.state_bytes() if tracking else 0,
            stages=self.profile.snapshot(),
        )

    def batch_timings(self, since_ms: int = 0) -> list[BatchTiming]:
        """The processor's :class:`~vlm_core.stream.BatchTiming` of batches sent at or after
        ``since_ms`` (the bench's per-batch timeline)."""
        return self.processor.batch_timings(since_ms) if self.processor else []

    def model_info(self, task: Task) -> dict[str, Any]:
        """``ModelServer.info`` of the model for ``task`` this replica holds."""
        return self._hosted(task).info()

    def model_stages(self, task: Task) -> dict[str, StageTotals]:
        """``ModelServer.stages`` of the model for ``task`` this replica holds."""
        return self._hosted(task).stages()

    def _hosted(self, task: Task) -> ModelServer:
        if task not in self.hosted:
            raise ValueError(f"this processor holds no {task.value} model (model_hosting: deployments)")
        return self.hosted[task]

    def _mean(self, metric: m.MetricDef) -> float:
        values = [v for (name, _tags), vs in self.metrics.observations.items() if name == metric.name for v in vs]
        return sum(values) / len(values) if values else 0.0

    def __del__(self) -> None:
        # Serve calls __del__ on graceful shutdown: stop polling, drain in-flight batches.
        self.stop_event.set()
        if self.thread.is_alive():
            self.thread.join(timeout=30)


def _proc_status_mb(*fields: str) -> dict[str, float]:
    """Memory figures of this process from /proc/self/status (Linux), in MB; 0 elsewhere."""
    found = dict.fromkeys(fields, 0.0)
    try:
        with open("/proc/self/status") as status:
            for line in status:
                name, _, rest = line.partition(":")
                if name in found:
                    found[name] = int(rest.split()[0]) / 1024
    except OSError:
        pass
    return found
