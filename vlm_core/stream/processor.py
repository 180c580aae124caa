"""StreamProcessor: frames topic -> models -> tracking stage -> sinks (results, events,
dead letters, to-label), at least once or exactly once.

Pure logic over small ports (:mod:`vlm_core.stream.ports`) and sinks
(:mod:`vlm_core.stream.sinks`), so it is testable without Kafka or Ray; ``services``
wires it to both.

Per poll the processor validates and decodes the frames, dead-letters bad ones, drops
stale ones by policy, and adds them to a forming batch, which goes as **one request** to
each model the batch's cameras need: at once when it is full (up to ``max_inflight``
full batches overlap, decode of the next running while the models work on this one),
otherwise when the models have answered the batch ahead, so that frames polled while
they work go together. With batches at the models a poll waits only until they are due
back (``_poll_wait_ms``), so an answered batch's results leave when it is answered, and
the acknowledgement wait of one batch overlaps the models' work on the next. While frames
trickle in a few at a time, it does not poll at all until shortly before then
(``_hold_s``): they wait on the broker and come in one fetch. When frames come
sparsely, slower than the models answer (``_sparse``), the batches in flight are
finished at once: waiting for the next poll would hold a slow camera's result for a whole
frame interval. Batches complete
in order: their outcomes go to the sinks, the broker's acknowledgements are awaited, and
only then are the batch's offsets committed.

With a :class:`~vlm_core.stream.tracks.TrackingStage`, tracked cameras' results get their
track ids and events in that in-order step, each batch's changed tracker states are
written to the state store beside its results (their acknowledgements gate the commit as
well), and every new partition assignment loads the assigned cameras' states first.

With :class:`~vlm_core.stream.ports.Transactions` (exactly once), each batch's sends (its
dead letters, results, to-label samples, events and tracker states) and its offsets are
one transaction: a batch is committed before the next one's outputs are sent (the models
still work on the next batch meanwhile), and any failure, a failed send future included,
aborts the transaction and rewinds to the committed offsets.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from vlm_core import metrics as m
from vlm_core.contracts.dlq import DeadLetterReason, FrameRef
from vlm_core.contracts.event import Event
from vlm_core.contracts.frame import DEFAULT_LIMITS, Frame, FrameLimits
from vlm_core.contracts.result import Result, TaskOutput
from vlm_core.contracts.task import Task
from vlm_core.errors import FrameError
from vlm_core.pipeline import CameraRouting, Delivery, DropPolicy, ModelInput, ProcessorSettings
from vlm_core.stream.ports import (
    FrameConsumer,
    ModelClient,
    Pending,
    Record,
    StateStore,
    TopicPartition,
    Transactions,
)
from vlm_core.stream.profile import StageProfile
from vlm_core.stream.sinks import Processed, Rejected, Sinks, sink_name
from vlm_core.stream.tracks import TrackingStage

log = logging.getLogger(__name__)

INTERNAL_ERROR = DeadLetterReason.INTERNAL_ERROR.value
MODEL_ERROR = DeadLetterReason.MODEL_ERROR.value
PRODUCE_ERROR = DeadLetterReason.PRODUCE_ERROR.value

#: A poll of at most 1/SPARSE_POLL_BATCHES of a batch is sparse (StreamProcessor._sparse).
#: At a quarter, a 5 fps camera's p50 went from 209 to 28 ms.
SPARSE_POLL_BATCHES = 4
#: Weight of the newest model round trip in the smoothed one that ``_sparse`` compares.
ROUND_TRIP_SMOOTHING = 0.2
#: With batches at the models and past the time they are due back, a poll waits this long
#: at most, so that their results leave within this of the answer (``_poll_wait_ms``).
ANSWER_POLL_MS = 5

#: While the models work and frames trickle in, the processor stops polling until this
#: long before the oldest batch is due back (``_hold_s``), to fetch and decode what came
#: meanwhile before the models answer.
HOLD_LEAD_MS = 10
#: Polls after a hold before a forming batch that is not full may go: the first returns
#: the fetch that was at the broker during the hold (it ended at the first frame), the
#: second the frames that came after it, in one fetch.
POLLS_AFTER_HOLD = 2

#: At most this many dead letters are remembered for de-duplicating retries.
_MAX_REMEMBERED_DEAD_LETTERS = 100_000

Source = tuple[str, int, int]  # topic, partition, offset of a frame record


class SendRule(str, Enum):
    """Why the forming batch went to the models (``vlm_batches_sent_total{rule}``)."""

    #: The models had answered every batch in flight, or none was.
    ANSWERED = "answered"
    #: Full, with frames waiting on the broker behind it: it joins the batches in flight.
    FULL = "full"
    #: A sparse stream's frames: the next ones come after the models answer anyway.
    SPARSE = "sparse"


#: The rule of a batch of one frame run on its own after its batch kept failing.
ISOLATED = "isolated"
#: Batches whose timing the processor keeps (``StreamProcessor.batch_timings``): the latest.
MAX_BATCH_TIMINGS = 4096


@dataclass(frozen=True)
class BatchTiming:
    """One batch's way through the models as the processor saw it, in milliseconds since
    the epoch (the clock of frames' capture stamps): sent, and answered (its outputs read,
    its results sent next), with its frames, its oldest frame's capture and the rule that
    sent it (a :class:`SendRule` value, or ``isolated``)."""

    sent_ms: int
    answered_ms: int
    frames: int
    oldest_capture_ms: int
    rule: str


class BatchFailedError(Exception):
    """A stage failed for a whole batch; the processor rewinds and retries it.

    ``reason`` is the DLQ reason a frame gets when the stage keeps failing for it alone,
    or None where the stage's failure is never a frame's fault (commits, DLQ sends)."""

    def __init__(
        self,
        stage: str,
        cause: BaseException,
        offsets: dict[TopicPartition, int] | None = None,
        *,
        reason: str | None = INTERNAL_ERROR,
    ) -> None:
        super().__init__(f"{stage} failed: {cause!r}")
        self.stage = stage
        self.cause = cause
        self.offsets = offsets or {}
        self.reason = reason


class CommitFailedError(BatchFailedError):
    """A batch whose outputs were sent was not acknowledged or not committed: no batch
    after it may be committed past it."""


def describe_error(exc: BaseException) -> str:
    """``Type: message`` of an unexpected exception, for a dead letter's error header."""
    return f"{type(exc).__name__}: {exc}"


@dataclass
class _Item:
    frame: Frame
    #: What the model replicas get: the decoded image, or the checked frame itself.
    model_input: np.ndarray | Frame
    record: Record
    tasks: tuple[Task, ...]
    dequeued_ms: int
    decode_ms: float


@dataclass
class _Batch:
    offsets: dict[TopicPartition, int]
    items: list[_Item] = field(default_factory=list)
    requests: dict[Task, tuple[list[int], Pending, float]] = field(default_factory=dict)
    #: Records refused at admission: dead-lettered when the batch's outputs are sent, so
    #: that under exactly once they are in the batch's transaction.
    rejected: list[Rejected] = field(default_factory=list)
    side_sends: list[Pending] = field(default_factory=list)  # the dead letters of this batch
    #: When its requests went to the models (its frames wait from their dequeue to this).
    sent_ms: int = 0
    #: Why it was sent (``SendRule`` value; a frame run on its own: ``isolated``).
    rule: str = ISOLATED


@dataclass
class _Producing:
    """A batch whose results are sent and whose offsets await the broker's acknowledgements."""

    offsets: dict[TopicPartition, int]
    side_sends: list[Pending]
    sends: list[tuple[_Item, Result, list[Pending]]]


@dataclass(frozen=True)
class _Failure:
    """A frame that failed on its own while its batch was re-run frame by frame."""

    record: Record
    error: BatchFailedError


#: The drop reason of frames from cameras this pipeline routes to no task.
NOT_ROUTED = "not_routed"


class StreamProcessor:
    def __init__(
        self,
        consumer: FrameConsumer,
        models: dict[Task, ModelClient],
        routing: CameraRouting,
        sinks: Sinks,
        *,
        metrics: m.MetricsSink | None = None,
        limits: FrameLimits = DEFAULT_LIMITS,
        batch_size: int = 8,
        poll_timeout_ms: int = 500,
        max_inflight: int = 2,
        model_timeout_s: float = 60.0,
        produce_timeout_s: float = 30.0,
        max_batch_retries: int = 3,
        tracking: TrackingStage | None = None,
        state_store: StateStore | None = None,
        transactions: Transactions | None = None,
        profile: StageProfile | None = None,
        model_input: ModelInput = ModelInput.DECODED,
        clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if (tracking is None) != (state_store is None):
            raise ValueError("tracking needs a state store, and a state store needs tracking")
        self.consumer = consumer
        self.models = models
        self.routing = routing
        self.sinks = sinks
        self.metrics = metrics or m.MetricsSink()
        #: Wall and CPU seconds by stage (the bench reads it; a replica keeps one across restarts).
        self.profile = profile or StageProfile()
        self.model_input = model_input
        self.limits = limits
        self.batch_size = batch_size
        self.poll_timeout_ms = poll_timeout_ms
        self.max_inflight = max_inflight
        self.model_timeout_s = model_timeout_s
        self.produce_timeout_s = produce_timeout_s
        self.max_batch_retries = max_batch_retries
        self.clock_ms = clock_ms
        self.monotonic = monotonic
        self.sleep = sleep
        #: Seconds between the last two polls that found frames, and the models' round trip
        #: as the processor reads it (a batch read after a later poll counts the poll's wait,
        #: so a slow camera's estimate settles near its frame interval until a sparse batch,
        #: awaited as soon as sent, brings it back down), smoothed over every batch: frames
        #: that come slower than the models answer are sparse.
        self._last_arrival_s = -float("inf")
        self._arrival_gap_s = float("inf")
        self._round_trip_s = 0.0
        #: Whether the last poll found a few frames, none left behind, not sparse (``_hold_s``).
        self._trickling = False
        #: Polls left after a hold before a forming batch that is not full may go.
        self._polls_after_hold = 0
        self._lock = threading.RLock()
        #: Frames admitted and decoded while the models work, sent together (``_admit_all``).
        self._forming: _Batch | None = None
        self._inflight: deque[_Batch] = deque()
        self._producing: deque[_Producing] = deque()
        #: Failures since the last successful commit.
        self._failures = 0
        #: Per partition, the end offset of a batch that kept failing: records before it are
        #: run one at a time until the partition's commit passes it.
        self._isolate_until: dict[TopicPartition, int] = {}
        #: Dead letters sent and not yet committed past, so a retried batch never sends
        #: its bad records again.
        self._dead_letters: dict[Source, list[Pending]] = {}
        self.results_produced = 0
        self._batch_timings: deque[BatchTiming] = deque(maxlen=MAX_BATCH_TIMINGS)
        self.tracking = tracking
        self.state_store = state_store
        if tracking is not None:
            # Frames re-read after a failure must find their first ids: at least every
            # frame that can be uncommitted at once is remembered.
            tracking.min_replay_window = max(tracking.min_replay_window, (max_inflight + 2) * batch_size)
        #: The consumer's assignment generation whose cameras' states are loaded.
        self._state_generation: int | None = None
        #: Exactly once: the transaction that holds the batch being sent.
        self.transactions = transactions
        self._in_transaction = False

    @classmethod
    def from_settings(
        cls,
        consumer: FrameConsumer,
        models: dict[Task, ModelClient],
        routing: CameraRouting,
        sinks: Sinks,
        settings: ProcessorSettings,
        *,
        metrics: m.MetricsSink | None = None,
        tracking: TrackingStage | None = None,
        state_store: StateStore | None = None,
        transactions: Transactions | None = None,
        profile: StageProfile | None = None,
    ) -> StreamProcessor:
        """A processor configured by the pipeline config's ``processor`` block; exactly once
        where it asks for it (then ``transactions`` is required)."""
        if settings.delivery is Delivery.EXACTLY_ONCE and transactions is None:
            raise ValueError("delivery exactly_once needs transactions (a transactional producer)")
        if settings.delivery is Delivery.AT_LEAST_ONCE and transactions is not None:
            raise ValueError("transactions were given, but the delivery is at_least_once")
        return cls(
            consumer,
            models,
            routing,
            sinks,
            metrics=metrics,
            limits=settings.limits,
            batch_size=settings.batch_size,
            poll_timeout_ms=settings.poll_timeout_ms,
            max_inflight=settings.max_inflight_batches,
            model_timeout_s=settings.model_timeout_s,
            produce_timeout_s=settings.produce_timeout_s,
            max_batch_retries=settings.max_batch_retries,
            tracking=tracking,
            state_store=state_store,
            transactions=transactions,
            profile=profile,
            model_input=settings.model_input,
        )

    @property
    def exactly_once(self) -> bool:
        return self.transactions is not None

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

        No record can make this raise: a record that fails on its own goes to the
        dead-letter topic, and a batch that keeps failing is re-run one frame at a time.
        Only the consumer itself (poll, rewind) can raise, when the broker is gone.

        The poll runs outside the lock: a consumer may call ``drain`` from another thread
        during a rebalance (kafka-python does, from its network thread), and the drain must
        not interleave with a step's stages.
        """
        with self._lock:
            hold_s, oldest = self._hold_s(), self._inflight[0] if self._inflight else None
        answered = oldest is not None and hold_s > 0 and self._answered(oldest, wait_s=hold_s, stage="hold")
        with self._lock:
            if hold_s > 0:
                self._polls_after_hold = POLLS_AFTER_HOLD
            # Answered: its results leave after a poll that only takes what is fetched.
            wait_ms = 0 if answered else self._poll_wait_ms()
        with self.profile.measure("poll"):
            records = self.consumer.poll(max(1, self.batch_size - self._forming_size()), wait_ms)
        with self._lock:
            if records:
                now = self.monotonic()
                # Frames found right after a hold came during it, at a pace it hid, and
                # faster than the models answer: that is why it held.
                self._arrival_gap_s = 0.0 if hold_s > 0 else now - self._last_arrival_s
                self._last_arrival_s = now
            return self._advance(records)

    def _advance(self, records: Sequence[Record]) -> int:
        try:
            try:
                self._load_states()
                if records and self._must_isolate(records):
                    self._drain()
                    self._run_isolated(records)
                elif records:
                    self._admit_all(records)
                backlog = self._backlog()
                behind = backlog is None or backlog > 0  # frames left on the broker, or cannot tell
                sparse = self._sparse(len(records), backlog)
                self._trickling = self._few(len(records), backlog) and not sparse
                if self._polls_after_hold:
                    self._polls_after_hold = self._polls_after_hold - 1 if records else 0
                while True:
                    if self._forming is not None:
                        rule = self._send_rule(self._forming, sparse, behind)
                        if rule is not None:
                            self._forming.rule = rule.value
                            self._inflight.append(self._send(self._forming))
                            self._forming = None
                            self._record(m.BATCHES_SENT, rule=rule.value)
                    if not self._inflight or not (
                        len(self._inflight) >= self.max_inflight
                        or sparse
                        or self._forming_size() >= self.batch_size  # full, and it may not join them
                        or self._answered(self._inflight[0])
                    ):
                        break
                    self._producing.append(self._produce(self._inflight.popleft()))
                    if self.exactly_once:  # one transaction at a time: this batch's
                        self._commit(self._producing.popleft())
                while self._producing and (len(self._producing) > 1 or not records):
                    self._commit(self._producing.popleft(), wait=False)
            except BatchFailedError:
                raise
            except Exception as exc:  # a bug of ours: retried, then isolated like any stage
                held = [b.offsets for b in self._batches()] + [p.offsets for p in self._producing]
                raise BatchFailedError("internal", exc, _merge_offsets(_end_offsets(records), *held)) from exc
        except BatchFailedError as exc:
            self._on_batch_failure(exc)
            return 0
        finally:
            self._record(m.INFLIGHT_BATCHES, len(self._inflight))
        return len(records)

    def batch_timings(self, since_ms: int = 0) -> list[BatchTiming]:
        """The batches sent at or after ``since_ms`` whose outputs were read, oldest first
        (at most the latest MAX_BATCH_TIMINGS). Read without the processor's lock, which a
        step holds while it waits for the models: copying the deque is one C call, so it
        does not interleave with the processor thread's appends."""
        return [timing for timing in tuple(self._batch_timings) if timing.sent_ms >= since_ms]

    def _load_states(self) -> None:
        """On a new assignment, before any of its frames: the assigned cameras' tracker
        states, from the state topic (what the previous owner committed)."""
        if self.tracking is None or self.state_store is None:
            return
        generation, assigned = self.consumer.assignment()
        if generation == self._state_generation:
            return
        self._drain()  # what is in flight belongs to the old assignment
        self.tracking.reset()
        partitions = sorted({p for _topic, p in assigned})
        try:
            records = self.state_store.load(partitions)
        except Exception as exc:
            raise BatchFailedError("state load", exc, reason=None) from exc
        loaded = self.tracking.load(records)
        self._state_generation = generation
        if loaded:
            self._record(m.TRACKING_STATE_LOADS, loaded)
        log.info("assignment %d (partitions %s): %d camera states loaded", generation, partitions, loaded)

    def drain(self) -> None:
        """Finish every in-flight batch and commit it (shutdown, partition revoke)."""
        with self._lock:
            try:
                self._drain()
            except BatchFailedError as exc:
                log.warning("%s while draining; rewinding so uncommitted frames are read again", exc)
                try:
                    self._on_batch_failure(exc)
                except Exception:  # partitions already gone: the next owner re-reads from the commit
                    log.exception("rewind after a failed drain did not work")
            self._record(m.INFLIGHT_BATCHES, 0)

    def _drain(self) -> None:
        if self._forming is not None:
            self._inflight.append(self._send(self._forming))
            self._forming = None
        while self._inflight:
            self._producing.append(self._produce(self._inflight.popleft()))
        while self._producing:
            self._commit(self._producing.popleft())

    # -- failures -----------------------------------------------------------------------
    def _on_batch_failure(self, exc: BatchFailedError) -> None:
        self._record(m.BATCH_FAILURES, stage=exc.stage)
        self._failures += 1
        log.warning("%s (failure %d in a row); rewinding to the last committed offsets", exc, self._failures)
        self._forming = None
        self._inflight.clear()
        if self.transactions is None and not isinstance(exc, CommitFailedError):
            self._keep_produced()
        self._producing.clear()
        if self.transactions is not None:
            # Nothing of the batch is visible: its dead letters are sent again on retry. A
            # producer that cannot abort (fenced, broken) raises: the caller recreates it.
            self._dead_letters.clear()
            self._in_transaction = False
            self.transactions.abort()
        else:
            self._forget_unsent_dead_letters()
        # A frame a model replica could not decode fails the same way on every retry.
        record_fault = isinstance(exc.cause, FrameError)
        if (self._failures >= self.max_batch_retries or record_fault) and exc.offsets:
            if not all(self._isolate_until.get(tp, -1) >= end for tp, end in exc.offsets.items()):
                log.error(
                    "a batch ending at %s failed %d times (%s); re-running it one frame at a time",
                    exc.offsets,
                    self._failures,
                    exc.stage,
                )
                self._record(m.BATCHES_ISOLATED, stage=exc.stage)
            self._isolate_until = _merge_offsets(self._isolate_until, exc.offsets)
        if self._failures > self.max_batch_retries:  # the broker or a model is down: do not spin
            self.sleep(min(0.1 * 2 ** (self._failures - self.max_batch_retries), 5.0))
        self.consumer.rewind()

    def _keep_produced(self) -> None:
        """At least once, after a later batch failed: commit the batches whose results are
        already sent, so that the rewind does not send them again. The first that cannot
        commit ends it; it and those after it are read again. The failed batch's count of
        failures in a row stands: these commits are not its success."""
        failures = self._failures
        try:
            while self._producing:
                self._commit(self._producing.popleft())
        except BatchFailedError as exc:
            log.warning("%s; its frames are read again", exc)
        finally:
            self._failures = failures

    def _must_isolate(self, records: Sequence[Record]) -> bool:
        return any(rec.offset < self._isolate_until.get((rec.topic, rec.partition), -1) for rec in records)

    def _run_isolated(self, records: Sequence[Record]) -> None:
        """Run a polled batch one record at a time. A record that fails alone is
        dead-lettered with its stage's reason; the others get their results (a frame
        retried here may come after a later frame of its camera). When every record of
        several fails the same way, the cause is not a record (a model replica or the
        broker is down): nothing is dead-lettered and the batch is retried."""
        done: list[_Producing] = []
        failures = self._run_each(records, done)
        succeeded = sum(len(p.sends) for p in done)
        if failures and succeeded:
            # A model that came back part way through fails the early frames only: each
            # failed frame gets a second try now that another frame went through.
            failures = self._run_each([f.record for f in failures], done)
        stages = {f.error.stage for f in failures}
        own_faults = all(isinstance(f.error.cause, FrameError) for f in failures)
        if len(failures) > 1 and not succeeded and len(stages) == 1 and not own_faults:
            first = failures[0].error
            raise BatchFailedError(first.stage, first.cause, _end_offsets(records), reason=None)
        side = _Batch(offsets=_end_offsets(records))
        for failure in failures:
            self._dead_letter(side, failure.record, failure.error.reason or INTERNAL_ERROR, str(failure.error))
        self._send_dead_letters(side)
        for producing in done:
            self._count_processed(producing)
        self._commit(_Producing(side.offsets, side.side_sends, []), wait=True)
        for tp in list(self._isolate_until):
            if side.offsets.get(tp, -1) >= self._isolate_until[tp]:
                del self._isolate_until[tp]

    def _run_each(self, records: Sequence[Record], done: list[_Producing]) -> list[_Failure]:
        failures: list[_Failure] = []
        for rec in records:
            try:
                producing = self._produce(self._send(self._admitted([rec])))
                self._await_acks(producing)
                done.append(producing)
            except BatchFailedError as exc:
                if exc.reason is None:
                    raise
                failures.append(_Failure(rec, exc))
        return failures

    def _forget_unsent_dead_letters(self) -> None:
        """After a failure, keep only the dead letters the broker has acknowledged: the
        others are sent again when their batch is retried."""
        deadline = time.monotonic() + self.produce_timeout_s
        for source, pending in list(self._dead_letters.items()):
            try:
                for send in pending:
                    send.result(timeout=max(0.0, deadline - time.monotonic()))
            except Exception:
                del self._dead_letters[source]

    # -- stages -------------------------------------------------------------------------
    def _forming_size(self) -> int:
        forming = self._forming
        return len(forming.items) if forming is not None else 0

    def _batches(self) -> list[_Batch]:
        """The batches not yet produced: those in the models and the forming one."""
        return [*self._inflight, *([self._forming] if self._forming is not None else [])]

    def _admit_all(self, records: Sequence[Record]) -> None:
        """Admit polled records into the forming batch, which ``_send_rule`` sends."""
        batch = self._admitted(records)
        forming = self._forming
        if forming is None:
            self._forming = batch
            return
        forming.offsets = _merge_offsets(forming.offsets, batch.offsets)
        forming.items.extend(batch.items)
        forming.rejected.extend(batch.rejected)

    def _admitted(self, records: Sequence[Record]) -> _Batch:
        """A batch of the records' frames, validated and decoded, not yet sent."""
        batch = _Batch(offsets=_end_offsets(records))
        now_ms = self.clock_ms()
        consumed: Counter[str] = Counter()
        for rec in records:
            start = time.perf_counter()
            try:
                item = self._admit(rec, now_ms, consumed)
            except FrameError as exc:
                self._dead_letter(batch, rec, exc.reason, str(exc))
                continue
            except Exception as exc:  # anything else about this record: it alone is dead-lettered
                log.exception("unexpected error on record %s/%s/%s", rec.topic, rec.partition, rec.offset)
                self._dead_letter(batch, rec, INTERNAL_ERROR, describe_error(exc))
                continue
            if item is None:
                continue
            item.decode_ms = (time.perf_counter() - start) * 1000
            batch.items.append(item)
        # Counters move once per camera per batch: exporter calls are not free at hundreds of fps.
        for camera, count in consumed.items():
            try:
                self.metrics.inc(m.FRAMES_CONSUMED, count, camera_id=camera)
            except Exception as exc:  # the metric layer refused this camera: its frames alone fail
                failed = [item for item in batch.items if item.frame.camera_id == camera]
                batch.items = [item for item in batch.items if item.frame.camera_id != camera]
                for item in failed:
                    self._dead_letter(batch, item.record, INTERNAL_ERROR, f"metrics: {describe_error(exc)}")
        return batch

    def _send(self, batch: _Batch) -> _Batch:
        """One request per model for the batch's frames that its cameras route to it."""
        batch.sent_ms = self.clock_ms()
        for task, client in self.models.items():
            indices = [i for i, item in enumerate(batch.items) if task in item.tasks]
            if indices:
                try:
                    with self.profile.measure("serve call"):
                        pending = client([batch.items[i].model_input for i in indices])
                except Exception as exc:
                    raise BatchFailedError(f"{task.value} request", exc, batch.offsets) from exc
                batch.requests[task] = (indices, pending, time.perf_counter())
        return batch

    def _admit(self, rec: Record, now_ms: int, consumed: Counter[str]) -> _Item | None:
        """Validate one record, and decode it where the models take pixels; None when it is
        dropped on purpose (counted). A frame that parses counts in ``consumed``, dropped or not."""
        with self.profile.measure("parse"):
            frame = Frame.from_kafka(rec.key, rec.value, rec.headers, limits=self.limits, now_ms=now_ms)
        consumed[frame.camera_id] += 1
        with self.profile.measure("route"):
            policy = self.routing.policy_for(frame.camera_id)
            if policy.drop_policy is DropPolicy.DROP_STALE and now_ms - frame.capture_ts_ms > policy.max_age_ms:
                self.metrics.inc(m.FRAMES_DROPPED, camera_id=frame.camera_id, reason="stale")
                return None
            tasks = tuple(t for t in policy.tasks if t in self.models)
            if not tasks:
                # A camera routed to no task is another pipeline's (several may share a topic).
                reason = NOT_ROUTED if not policy.tasks else "no_model"
                self.metrics.inc(m.FRAMES_DROPPED, camera_id=frame.camera_id, reason=reason)
                return None
        if self.model_input is ModelInput.ENCODED:
            with self.profile.measure("check"):
                frame.check(limits=self.limits)
            return _Item(frame, frame, rec, tasks, now_ms, 0.0)
        with self.profile.measure("decode"):
            image = frame.decode(limits=self.limits)
        return _Item(frame, image, rec, tasks, now_ms, 0.0)

    def _produce(self, batch: _Batch) -> _Producing:
        """Wait for the batch's model outputs, assemble its results and send them, with the
        batch's dead letters."""
        outputs: dict[Task, dict[int, TaskOutput]] = {}
        model_ms: dict[Task, float] = {}
        for task, (indices, request, sent_at) in batch.requests.items():
            try:
                with self.profile.measure("model wait"):
                    task_outputs = request.result(timeout=self._model_time_left(sent_at))
                if len(task_outputs) != len(indices):
                    raise ValueError(f"{len(task_outputs)} outputs for {len(indices)} frames")
            except Exception as exc:  # a frame a model replica could not decode fails with its own reason
                reason = exc.reason if isinstance(exc, FrameError) else MODEL_ERROR
                raise BatchFailedError(f"{task.value} model", exc, batch.offsets, reason=reason) from exc
            elapsed = time.perf_counter() - sent_at
            model_ms[task] = elapsed * 1000
            self._round_trip_s += ROUND_TRIP_SMOOTHING * (elapsed - self._round_trip_s)
            outputs[task] = dict(zip(indices, task_outputs, strict=True))
            if task_outputs:
                ref = task_outputs[0].model
                tags = {"task": task.value, "model": ref.name, "version": ref.version}
                self._record(m.MODEL_LATENCY, elapsed, **tags)
                self._record(m.MODEL_BATCH_SIZE, len(indices), **tags)
        if batch.items:
            oldest = min(item.frame.capture_ts_ms for item in batch.items)
            self._batch_timings.append(
                BatchTiming(batch.sent_ms, self.clock_ms(), len(batch.items), oldest, batch.rule)
            )
        self._send_dead_letters(batch)
        sends: list[tuple[_Item, Result, list[Pending]]] = []
        for i, item in enumerate(batch.items):
            try:
                with self.profile.measure("assemble"):
                    own = {task: outs[i] for task, outs in outputs.items() if i in outs}
                    result = self._assemble(item, own, model_ms, batch.sent_ms)
                events: tuple[Event, ...] = ()
                if self.tracking is not None:
                    with self.profile.measure("track"):
                        ref = FrameRef(item.record.topic, item.record.partition, item.record.offset)
                        result, events = self.tracking.apply(item.frame, ref, result)
                with self.profile.measure("serialise"):
                    encoded = result.to_bytes()
                processed = Processed(item.record, item.frame, result, encoded, events)
            except Exception as exc:  # this frame's outputs cannot make a result: it alone fails
                log.exception("cannot assemble the result of record %s", _source(item.record))
                self._dead_letter(batch, item.record, INTERNAL_ERROR, f"result: {describe_error(exc)}")
                continue
            pending: list[Pending] = []
            self._begin()
            for sink in self.sinks.results:
                try:
                    with self.profile.measure("produce"):
                        pending.extend(sink(processed))
                except Exception as exc:
                    raise BatchFailedError(f"{sink_name(sink)} sink", exc, batch.offsets, reason=PRODUCE_ERROR) from exc
            sends.append((item, result, pending))
        self._send_dead_letters(batch)  # those whose result could not be made
        if self.tracking is not None and self.state_store is not None:
            for record in self.tracking.checkpoint():
                self._begin()
                try:
                    batch.side_sends.append(self.state_store.write(record))
                except Exception as exc:
                    raise BatchFailedError("state produce", exc, batch.offsets, reason=None) from exc
        return _Producing(batch.offsets, batch.side_sends, sends)

    def _await_acks(self, producing: _Producing) -> None:
        for pending in producing.side_sends:
            try:
                pending.result(timeout=self.produce_timeout_s)
            except Exception as exc:
                raise CommitFailedError("side produce ack", exc, producing.offsets, reason=None) from exc
        for _item, _result, sends in producing.sends:
            for send in sends:
                try:
                    send.result(timeout=self.produce_timeout_s)
                except Exception as exc:
                    raise CommitFailedError("produce ack", exc, producing.offsets, reason=PRODUCE_ERROR) from exc

    def _count_processed(self, producing: _Producing) -> None:
        """After the broker acknowledged a batch's results: counters and latencies. A
        failure here cannot take a result back, so it is logged, never raised."""
        processed: Counter[str] = Counter()
        for item, result, _pending in producing.sends:
            processed[item.frame.camera_id] += 1
            latency_ms = max(0, result.processed_ts_ms - item.frame.capture_ts_ms)
            self._record(m.E2E_LATENCY, latency_ms / 1000, camera_id=item.frame.camera_id)
            self.results_produced += 1
        for camera, count in processed.items():
            self._record(m.FRAMES_PROCESSED, count, camera_id=camera)

    def _commit(self, producing: _Producing, wait: bool = True) -> None:
        """Wait for the broker's acknowledgements of a batch's records, then commit it.

        The steady state does not wait for the commit itself (a broker round trip per batch
        would idle the models); drains on revoke and shutdown do.
        """
        with self.profile.measure("ack"):
            self._await_acks(producing)
        try:
            if self.transactions is not None:
                self._begin()  # a batch of dropped frames still commits its offsets
                with self.profile.measure("commit"):
                    self.transactions.commit(producing.offsets)
                self._in_transaction = False
            else:
                with self.profile.measure("commit"):
                    self.consumer.commit(producing.offsets, wait=wait)
        except Exception as exc:
            raise CommitFailedError("commit", exc, producing.offsets, reason=None) from exc
        self._count_processed(producing)
        self._failures = 0
        for source in [s for s in self._dead_letters if s[2] < producing.offsets.get((s[0], s[1]), -1)]:
            del self._dead_letters[source]

    def _assemble(
        self, item: _Item, outputs: dict[Task, TaskOutput], model_ms: dict[Task, float], sent_ms: int
    ) -> Result:
        frame = item.frame
        now = self.clock_ms()
        timing = {
            "queue": float(max(0, item.dequeued_ms - frame.capture_ts_ms)),
            "decode": item.decode_ms,
            "batching": float(max(0, sent_ms - item.dequeued_ms)),
            **{task.value: ms for task, ms in model_ms.items() if task in outputs},
            "total": float(max(0, now - frame.capture_ts_ms)),
        }
        return Result(
            camera_id=frame.camera_id,
            seq=frame.seq,
            capture_ts_ms=frame.capture_ts_ms,
            processed_ts_ms=now,
            width=frame.width,
            height=frame.height,
            outputs=outputs,
            timing_ms=timing,
            partition=item.record.partition,
            offset=item.record.offset,
        )

    def _dead_letter(self, batch: _Batch, rec: Record, reason: str, message: str) -> None:
        """Refuse a record: it goes to the dead-letter topic with the batch's outputs."""
        batch.rejected.append(Rejected(rec, reason, message))

    def _send_dead_letters(self, batch: _Batch) -> None:
        """Send the batch's refused records to the dead-letter topic, each once: a retried
        batch does not send its bad records again while this processor lives, unless their
        transaction was aborted (``vlm-dlq-source`` is their key)."""
        rejected, batch.rejected = batch.rejected, []
        for rejection in rejected:
            source = _source(rejection.record)
            if source in self._dead_letters:
                continue
            self._begin()
            try:
                pending = list(self.sinks.dead_letters(rejection))
            except Exception as exc:
                raise BatchFailedError("dead-letter produce", exc, batch.offsets, reason=None) from exc
            batch.side_sends.extend(pending)
            if len(self._dead_letters) >= _MAX_REMEMBERED_DEAD_LETTERS:
                del self._dead_letters[next(iter(self._dead_letters))]
            self._dead_letters[source] = pending
            self._record(m.FRAMES_DEAD_LETTERED, reason=rejection.reason)

    def _begin(self) -> None:
        """Exactly once: open the transaction the next sends belong to."""
        if self.transactions is not None and not self._in_transaction:
            self.transactions.begin()
            self._in_transaction = True

    def _poll_wait_ms(self) -> int:
        """How long the next poll may wait for frames: ``poll_timeout_ms``, but with batches
        at the models only until the oldest is due back (a smoothed round trip after it was
        sent), and past that ANSWER_POLL_MS at a time. An answered batch's results leave
        when the models answer, not when the next frame comes: the last batch before a
        pause waited out a whole poll (500 ms, the consumer's floor then; a 10 s stream's
        p99 latency was that wait)."""
        if self._polls_after_hold:  # what came during the hold is on the broker already
            return ANSWER_POLL_MS
        due_s = self._due_in_s()
        if due_s is None:
            return self.poll_timeout_ms
        return int(min(self.poll_timeout_ms, max(ANSWER_POLL_MS, 1000 * due_s)))

    def _due_in_s(self) -> float | None:
        """Seconds until the oldest batch in flight is due back (a smoothed round trip after
        it was sent; negative once past), None with none in flight."""
        sent = [sent_at for batch in self._inflight for _indices, _request, sent_at in batch.requests.values()]
        return min(sent) + self._round_trip_s - time.perf_counter() if sent else None

    def _hold_s(self) -> float:
        """How long to wait for the models instead of polling: while frames trickle in
        (a few a poll, none left behind, faster than the models answer) and the forming
        batch is under half full, until HOLD_LEAD_MS before the oldest batch in flight is
        due back, or its answer. Polled as they came, such frames cost a poll and a fetch
        each: 2.66 CPU ms a frame in the processor at a paced 180 fps, 1.93 with the hold
        (docs/performance-notes.md, "The processor holds its polls while the models work").
        Those that come during a hold wait on the broker and come in one fetch, decoded
        before the answer they would have waited for anyway."""
        due_s = self._due_in_s()
        if not self._trickling or due_s is None or 2 * self._forming_size() >= self.batch_size:
            return 0.0
        return max(0.0, due_s - HOLD_LEAD_MS / 1000)

    def _few(self, polled: int, backlog: int | None) -> bool:
        """Whether a poll found at most 1/SPARSE_POLL_BATCHES of a batch and left none behind."""
        return polled > 0 and polled * SPARSE_POLL_BATCHES <= self.batch_size and backlog == 0

    def _sparse(self, polled: int, backlog: int | None) -> bool:
        """Whether the stream is sparse: a few frames that left none behind and came more
        than a model round trip after the previous ones. The next poll then waits for the next
        frame, which comes after the batches in flight are answered: finishing them now
        costs nothing, and leaving them would hold a slow camera's results for a whole
        frame interval. Frames that come faster are polled while the models work (answered
        batches leave after each poll, see ``_answered``), and a fuller poll overlaps:
        finishing it at once would idle the model while the next frames, already on their
        way, are polled. A poll that found none is not sparse: with batches in flight it
        was short (``_poll_wait_ms``), and the forming batch still waits for them."""
        return self._few(polled, backlog) and self._arrival_gap_s > self._round_trip_s

    def _send_rule(self, forming: _Batch, sparse: bool, behind: bool) -> SendRule | None:
        """Why the forming batch goes to the models now (counted by rule), None while it
        waits: when they have answered every batch of this processor's (before its results
        are produced, so the models do not idle while they are), when it is full and frames
        wait on the broker behind it (``behind``: the last poll left some, or the consumer
        cannot tell; full batches overlap, up to ``max_inflight``), or when the stream is
        sparse; after a hold, not before the second poll (``POLLS_AFTER_HOLD``) unless
        full. Otherwise its frames wait, decoded, for the batch in flight, and then go in
        one request: a request per poll would load the models with overhead and queue the
        requests behind each other.

        A full batch of a stream the processor keeps up with waits too: sent behind the
        one at the models, it would wait there for its whole round trip, and the batches
        of a live stream would grow to full size and stay there; sent when that one is
        answered, it carries the frames that came during the last. A backlog still
        overlaps: there the overlap is the throughput. (docs/performance-notes.md, "A full
        batch waits while the processor keeps up".)"""
        if len(self._inflight) >= self.max_inflight:
            return None
        full = len(forming.items) >= self.batch_size
        if self._polls_after_hold and not full:  # frames that came during a hold are on their way
            return None
        if not self._inflight:
            return SendRule.ANSWERED
        if sparse:
            return SendRule.SPARSE
        if full and behind:
            return SendRule.FULL
        return SendRule.ANSWERED if all(self._answered(batch) for batch in self._inflight) else None

    def _answered(self, batch: _Batch, wait_s: float = 0.0, stage: str = "probe") -> bool:
        """Whether the models answered every request of the batch, waiting up to ``wait_s``
        (a hold) or not at all: an answered batch's results leave now rather than when the
        in-flight queue is full. A failed request counts as answered (``_produce`` handles
        its failure), and so does one older than ``model_timeout_s`` (``_produce`` fails it)."""
        with self.profile.measure(stage):
            deadline = time.perf_counter() + wait_s
            for _indices, request, sent_at in batch.requests.values():
                if not self._model_time_left(sent_at):
                    continue
                try:
                    request.result(timeout=max(0.0, deadline - time.perf_counter()))
                except TimeoutError:
                    return False
                except Exception:
                    continue  # failed: answered all the same
            return True

    def _model_time_left(self, sent_at: float) -> float:
        """Seconds a request sent at ``sent_at`` (``perf_counter``) may still take, 0 when
        it is past ``model_timeout_s``."""
        return max(0.0, sent_at + self.model_timeout_s - time.perf_counter())

    def _backlog(self) -> int | None:
        """Frames on the broker behind those polled, as the consumer last saw them; each
        partition's is reported as its lag. None when the consumer cannot tell."""
        try:
            lags = self.consumer.lag()
        except Exception:  # lag is informative; never fail a batch for it
            return None
        for (topic, partition), lag in lags.items():
            self._record(m.CONSUMER_LAG, lag, topic=topic, partition=str(partition))
        return sum(lags.values())

    def _record(self, metric: m.MetricDef, value: float = 1.0, **tags: str) -> None:
        """A metric update that must never fail a batch (the per-record counters of
        ``_submit`` call the sink directly: their failure is that record's)."""
        try:
            self.metrics.record(metric, value, **tags)
        except Exception:
            log.warning("metric %s %s not recorded", metric.name, tags, exc_info=True)


def _source(rec: Record) -> Source:
    return (rec.topic, rec.partition, rec.offset)


def _merge_offsets(*offsets: dict[TopicPartition, int]) -> dict[TopicPartition, int]:
    merged: dict[TopicPartition, int] = {}
    for part in offsets:
        for tp, end in part.items():
            merged[tp] = max(merged.get(tp, 0), end)
    return merged


def _end_offsets(records: Iterable[Record]) -> dict[TopicPartition, int]:
    return _merge_offsets(*({(rec.topic, rec.partition): rec.offset + 1} for rec in records))
