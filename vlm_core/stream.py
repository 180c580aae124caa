"""StreamProcessor: frames topic -> models -> results topic, at least once.

Pure logic over three small protocols (a consumer, a producer, model clients), so it is
testable without Kafka or Ray; ``services/inference`` wires it to both.

Per poll the processor validates and decodes the batch, dead-letters bad frames, drops
stale ones by policy, and sends **one request per batch** to each model the batch's
cameras need. Up to ``max_inflight`` batches overlap (decode of the next batch runs
while models work on the current one), and the acknowledgement wait of one batch
overlaps the models' work on the next. Batches complete in order: results are produced,
the broker's acknowledgements awaited, and only then the batch's offsets committed.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from vlm_core import metrics as m
from vlm_core.errors import FrameError
from vlm_core.frame import DEFAULT_LIMITS, Frame, FrameLimits
from vlm_core.models.spec import Task
from vlm_core.pipeline import ActiveLearningSettings, CameraRouting, DropPolicy
from vlm_core.results import Classification, Detections, Result, Segmentation, TaskOutput

log = logging.getLogger(__name__)

DLQ_REASON_HEADER = "vlm-dlq-reason"
DLQ_ERROR_HEADER = "vlm-dlq-error"
DLQ_SOURCE_HEADER = "vlm-dlq-source"
#: Messages on the to_label topic: a frame reference (topic/partition/offset) and why.
TO_LABEL_SCHEMA = "vlm.to_label/v1"

TopicPartition = tuple[str, int]


class Record(Protocol):
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes | None]] | None


class Pending(Protocol):
    def result(self, timeout: float | None = None) -> Any: ...


class FrameConsumer(Protocol):
    def poll(self, max_records: int, timeout_ms: int) -> list[Record]: ...

    def commit(self, offsets: dict[TopicPartition, int], wait: bool = True) -> None:
        """Commit offsets. ``wait=False`` may return before the broker confirms; a commit
        lost that way only means the frames are read again (at least once)."""

    def rewind(self) -> None:
        """Seek every assigned partition back to its committed offset."""

    def lag(self) -> dict[TopicPartition, int]: ...


class ResultProducer(Protocol):
    def send(self, topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> Pending: ...


#: Sends one batch of decoded frames to a model deployment; returns its pending outputs.
ModelClient = Callable[[list[np.ndarray]], Pending]


class BatchFailedError(Exception):
    def __init__(self, stage: str, cause: BaseException, batch: _Batch | None = None) -> None:
        super().__init__(f"{stage} failed: {cause!r}")
        self.stage = stage
        self.batch = batch


@dataclass
class _Item:
    frame: Frame
    image: np.ndarray
    record: Record
    tasks: tuple[Task, ...]
    dequeued_ms: int
    decode_ms: float


@dataclass
class _Batch:
    offsets: dict[TopicPartition, int]
    items: list[_Item] = field(default_factory=list)
    requests: dict[Task, tuple[list[int], Pending, float]] = field(default_factory=dict)
    side_sends: list[Pending] = field(default_factory=list)  # DLQ and to_label records of this batch


@dataclass
class _Producing:
    """A batch whose results are sent and whose offsets await the broker's acknowledgements."""

    offsets: dict[TopicPartition, int]
    side_sends: list[Pending]
    sends: list[tuple[_Item, Result, Pending]]


@dataclass(frozen=True)
class ProcessorTopics:
    results: str
    dlq: str
    to_label: str | None = None


class StreamProcessor:
    def __init__(
        self,
        consumer: FrameConsumer,
        producer: ResultProducer,
        models: dict[Task, ModelClient],
        routing: CameraRouting,
        topics: ProcessorTopics,
        *,
        metrics: m.MetricsSink | None = None,
        limits: FrameLimits = DEFAULT_LIMITS,
        batch_size: int = 8,
        poll_timeout_ms: int = 100,
        max_inflight: int = 2,
        model_timeout_s: float = 60.0,
        produce_timeout_s: float = 30.0,
        max_model_retries: int = 3,
        on_result: Callable[[Result], None] | None = None,
        active_learning: ActiveLearningSettings | None = None,
        clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self.consumer = consumer
        self.producer = producer
        self.models = models
        self.routing = routing
        self.topics = topics
        self.metrics = metrics or m.MetricsSink()
        self.limits = limits
        self.batch_size = batch_size
        self.poll_timeout_ms = poll_timeout_ms
        self.max_inflight = max_inflight
        self.model_timeout_s = model_timeout_s
        self.produce_timeout_s = produce_timeout_s
        self.max_model_retries = max_model_retries
        self._failures: tuple[tuple[tuple[TopicPartition, int], ...], int] = ((), 0)
        self.on_result = on_result
        self.clock_ms = clock_ms
        self._lock = threading.RLock()
        self._inflight: deque[_Batch] = deque()
        self._producing: deque[_Producing] = deque()
        self.active_learning = active_learning if active_learning and active_learning.enabled else None
        self._sampled_ms: deque[int] = deque()  # send times within the last minute
        self.results_produced = 0

    # -- main loop --------------------------------------------------------------------
    def run(self, should_stop: Callable[[], bool]) -> None:
        while not should_stop():
            self.step()
        self.drain()

    def step(self) -> int:
        """Poll once, submit the batch, move finished batches along. Returns records polled.

        Three stages overlap: batches in the models (up to ``max_inflight``), results of the
        previous batch waiting for the broker's acknowledgement, and the next poll. The
        acknowledgement wait of a batch happens one step later, so it never idles a model.

        The poll runs outside the lock: a consumer may call ``drain`` from another thread
        during a rebalance (kafka-python does, from its network thread), and the drain must
        not interleave with a step's stages.
        """
        records = self.consumer.poll(self.batch_size, self.poll_timeout_ms)
        with self._lock:
            return self._advance(records)

    def _advance(self, records: Sequence[Record]) -> int:
        try:
            if records:
                self._inflight.append(self._submit(records))
            while self._inflight and (len(self._inflight) >= self.max_inflight or not records):
                self._producing.append(self._produce(self._inflight.popleft()))
            while self._producing and (len(self._producing) > 1 or not records):
                self._commit(self._producing.popleft(), wait=False)
        except BatchFailedError as exc:
            self.metrics.inc(m.BATCH_FAILURES, stage=exc.stage)
            log.warning("%s; rewinding to the last committed offsets", exc)
            self._inflight.clear()
            self._producing.clear()
            if exc.batch is not None and self._give_up_on(exc.batch):
                self._quarantine(exc.batch, exc)
            self.consumer.rewind()
            return 0
        finally:
            self.metrics.set(m.INFLIGHT_BATCHES, len(self._inflight))
        self._report_lag()
        return len(records)

    def drain(self) -> None:
        """Finish every in-flight batch and commit it (shutdown, partition revoke)."""
        with self._lock:
            self._drain()

    def _drain(self) -> None:
        try:
            while self._inflight:
                self._producing.append(self._produce(self._inflight.popleft()))
            while self._producing:
                self._commit(self._producing.popleft())
        except BatchFailedError as exc:
            self.metrics.inc(m.BATCH_FAILURES, stage=exc.stage)
            log.warning("%s while draining; rewinding so uncommitted frames are read again", exc)
            self._inflight.clear()
            self._producing.clear()
            try:
                self.consumer.rewind()
            except Exception:  # partitions already gone: the next owner re-reads from the commit
                log.exception("rewind after a failed drain did not work")
        self.metrics.set(m.INFLIGHT_BATCHES, 0)

    def _give_up_on(self, batch: _Batch) -> bool:
        """True once the same batch failed in the model ``max_model_retries`` times in a row."""
        key = tuple(sorted(batch.offsets.items()))
        self._failures = (key, self._failures[1] + 1) if self._failures[0] == key else (key, 1)
        return self._failures[1] >= self.max_model_retries

    def _quarantine(self, batch: _Batch, error: BatchFailedError) -> None:
        """A batch the model keeps failing on goes to the dead-letter topic, so one poisoned
        frame cannot stall its partition; the stream continues after it."""
        log.error(
            "batch %s failed %d times; dead-lettering its %d frames", batch.offsets, self._failures[1], len(batch.items)
        )
        try:
            for item in batch.items:
                self._dead_letter(batch, item.record, "model_error", str(error))
            self._commit(_Producing(batch.offsets, batch.side_sends, []))
        except Exception:  # the broker is the problem, not the batch: keep retrying it
            log.exception("dead-lettering the failing batch did not work; it will be retried")
            return
        self._failures = ((), 0)

    # -- stages -------------------------------------------------------------------------
    def _submit(self, records: Sequence[Record]) -> _Batch:
        batch = _Batch(offsets={})
        now_ms = self.clock_ms()
        consumed: Counter[str] = Counter()
        for rec in records:
            tp = (rec.topic, rec.partition)
            batch.offsets[tp] = max(batch.offsets.get(tp, 0), rec.offset + 1)
            start = time.perf_counter()
            try:
                frame = Frame.from_kafka(rec.key, rec.value, rec.headers, limits=self.limits)
                camera_tag = frame.camera_id
                consumed[camera_tag] += 1
                policy = self.routing.policy_for(frame.camera_id)
                if policy.drop_policy is DropPolicy.DROP_STALE and now_ms - frame.capture_ts_ms > policy.max_age_ms:
                    self.metrics.inc(m.FRAMES_DROPPED, camera_id=camera_tag, reason="stale")
                    continue
                tasks = tuple(t for t in policy.tasks if t in self.models)
                if not tasks:
                    self.metrics.inc(m.FRAMES_DROPPED, camera_id=camera_tag, reason="no_model")
                    continue
                image = frame.decode(limits=self.limits)
            except FrameError as exc:
                self._dead_letter(batch, rec, exc.reason, str(exc))
                continue
            decode_ms = (time.perf_counter() - start) * 1000
            batch.items.append(_Item(frame, image, rec, tasks, now_ms, decode_ms))
        # Counters move once per camera per batch: exporter calls are not free at hundreds of fps.
        for camera, count in consumed.items():
            self.metrics.inc(m.FRAMES_CONSUMED, count, camera_id=camera)
        for task, client in self.models.items():
            indices = [i for i, item in enumerate(batch.items) if task in item.tasks]
            if indices:
                try:
                    pending = client([batch.items[i].image for i in indices])
                except Exception as exc:
                    raise BatchFailedError(f"{task.value} request", exc) from exc
                batch.requests[task] = (indices, pending, time.perf_counter())
        return batch

    def _produce(self, batch: _Batch) -> _Producing:
        """Wait for the batch's model outputs, assemble its results and send them."""
        outputs: dict[Task, dict[int, TaskOutput]] = {}
        model_ms: dict[Task, float] = {}
        for task, (indices, pending, sent_at) in batch.requests.items():
            try:
                task_outputs = pending.result(timeout=self.model_timeout_s)
            except Exception as exc:
                raise BatchFailedError(f"{task.value} model", exc, batch) from exc
            elapsed = time.perf_counter() - sent_at
            model_ms[task] = elapsed * 1000
            if len(task_outputs) != len(indices):
                raise BatchFailedError(
                    f"{task.value} model", ValueError("output count differs from input count"), batch
                )
            outputs[task] = dict(zip(indices, task_outputs, strict=True))
            if task_outputs:
                ref = task_outputs[0].model
                tags = {"task": task.value, "model": ref.name, "version": ref.version}
                self.metrics.observe(m.MODEL_LATENCY, elapsed, **tags)
                self.metrics.observe(m.MODEL_BATCH_SIZE, len(indices), **tags)
        sends: list[tuple[_Item, Result, Pending]] = []
        for i, item in enumerate(batch.items):
            result = self._assemble(item, {task: outs[i] for task, outs in outputs.items() if i in outs}, model_ms)
            try:
                pending = self.producer.send(self.topics.results, item.frame.camera_id.encode(), result.to_bytes(), [])
            except Exception as exc:
                raise BatchFailedError("produce", exc) from exc
            sends.append((item, result, pending))
            self._maybe_sample(batch, item, result)
        return _Producing(batch.offsets, batch.side_sends, sends)

    def _maybe_sample(self, batch: _Batch, item: _Item, result: Result) -> None:
        """Active learning: a low-confidence result's frame reference goes to the to_label
        topic for a labelling tool, at most ``max_per_minute`` of them."""
        policy = self.active_learning
        if policy is None or not self.topics.to_label:
            return
        scores = {}
        if result.classification is not None and result.classification.top_k:
            scores["classification"] = result.classification.top_k[0].score
        if result.detection is not None and result.detection.detections:
            scores["detection"] = max(d.score for d in result.detection.detections)
        low = {task: score for task, score in scores.items() if score < policy.score_threshold}
        if not low:
            return
        now = self.clock_ms()
        while self._sampled_ms and now - self._sampled_ms[0] >= 60_000:
            self._sampled_ms.popleft()
        if len(self._sampled_ms) >= policy.max_per_minute:
            return
        self._sampled_ms.append(now)
        rec = item.record
        doc = {
            "schema": TO_LABEL_SCHEMA,
            "camera_id": result.camera_id,
            "seq": result.seq,
            "capture_ts_ms": result.capture_ts_ms,
            "frame": {"topic": rec.topic, "partition": rec.partition, "offset": rec.offset},
            "scores": low,
            "models": {
                task: f"{output.model.name}@{output.model.version}"
                for task, output in (("classification", result.classification), ("detection", result.detection))
                if output is not None and task in low
            },
        }
        try:
            pending = self.producer.send(self.topics.to_label, rec.key, json.dumps(doc).encode(), [])
        except Exception as exc:
            raise BatchFailedError("to_label produce", exc) from exc
        batch.side_sends.append(pending)
        for task in low:
            self.metrics.inc(m.TO_LABEL_SAMPLED, task=task)

    def _commit(self, producing: _Producing, wait: bool = True) -> None:
        """Wait for the broker's acknowledgements of a batch's records, then commit it.

        The steady state does not wait for the commit itself (a broker round trip per batch
        would idle the models); drains on revoke and shutdown do.
        """
        try:
            for pending in producing.side_sends:
                pending.result(timeout=self.produce_timeout_s)
            processed: Counter[str] = Counter()
            for item, result, pending in producing.sends:
                pending.result(timeout=self.produce_timeout_s)
                processed[item.frame.camera_id] += 1
                latency_ms = max(0, result.processed_ts_ms - item.frame.capture_ts_ms)
                self.metrics.observe(m.E2E_LATENCY, latency_ms / 1000, camera_id=item.frame.camera_id)
                self.results_produced += 1
                if self.on_result is not None:
                    self.on_result(result)
        except Exception as exc:
            raise BatchFailedError("produce ack", exc) from exc
        for camera, count in processed.items():
            self.metrics.inc(m.FRAMES_PROCESSED, count, camera_id=camera)
        try:
            self.consumer.commit(producing.offsets, wait=wait)
        except Exception as exc:
            raise BatchFailedError("commit", exc) from exc

    def _assemble(self, item: _Item, outputs: dict[Task, TaskOutput], model_ms: dict[Task, float]) -> Result:
        frame = item.frame
        now = self.clock_ms()
        timing = {
            "queue": float(max(0, item.dequeued_ms - frame.capture_ts_ms)),
            "decode": item.decode_ms,
            **{task.value: ms for task, ms in model_ms.items() if task in outputs},
            "total": float(max(0, now - frame.capture_ts_ms)),
        }
        classification = outputs.get(Task.CLASSIFICATION)
        detection = outputs.get(Task.DETECTION)
        segmentation = outputs.get(Task.SEGMENTATION)
        return Result(
            camera_id=frame.camera_id,
            seq=frame.seq,
            capture_ts_ms=frame.capture_ts_ms,
            processed_ts_ms=now,
            width=frame.width,
            height=frame.height,
            classification=classification if isinstance(classification, Classification) else None,
            detection=detection if isinstance(detection, Detections) else None,
            segmentation=segmentation if isinstance(segmentation, Segmentation) else None,
            timing_ms=timing,
            partition=item.record.partition,
            offset=item.record.offset,
        )

    def _dead_letter(self, batch: _Batch, rec: Record, reason: str, message: str) -> None:
        headers = [(k, v) for k, v in (rec.headers or []) if v is not None]
        headers += [
            (DLQ_REASON_HEADER, reason.encode()),
            (DLQ_ERROR_HEADER, message[:500].encode()),
            (DLQ_SOURCE_HEADER, f"{rec.topic}/{rec.partition}/{rec.offset}".encode()),
        ]
        try:
            batch.side_sends.append(self.producer.send(self.topics.dlq, rec.key, rec.value or b"", headers))
        except Exception as exc:
            raise BatchFailedError("dead-letter produce", exc) from exc
        self.metrics.inc(m.FRAMES_DEAD_LETTERED, reason=reason)

    def _report_lag(self) -> None:
        try:
            lags = self.consumer.lag()
        except Exception:  # lag is informative; never fail a batch for it
            return
        for (topic, partition), lag in lags.items():
            self.metrics.set(m.CONSUMER_LAG, lag, topic=topic, partition=str(partition))


def dlq_reason(headers: Iterable[tuple[str, bytes | None]] | None) -> str | None:
    for key, value in headers or []:
        if key == DLQ_REASON_HEADER and value is not None:
            return value.decode()
    return None
