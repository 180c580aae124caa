"""Camera workers. A failing camera reconnects with backoff and never stops the others."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np
from kafka.errors import AuthorizationError

from services import kafka_io
from services.ingest import metrics
from vlm_core.buffering import BufferPolicy, FrameBuffer
from vlm_core.contracts.frame import Encoding, Frame, validate_camera_id
from vlm_core.contracts.truth import FrameTruth
from vlm_core.cpu import name_thread
from vlm_core.errors import ConfigError, VlmError
from vlm_core.metrics import metric_label
from vlm_core.sources import Source, SourceFailure, SourceSpec, failure_of, open_source, probe_file

log = logging.getLogger(__name__)

FPS_HINT = "give frames per second > 0, or 0 to send every frame unpaced"

#: Called with a frame; must hand it to Kafka and call ``on_done(error_or_None)`` later.
FrameSink = Callable[[Frame, Callable[[BaseException | None], None]], None]


@dataclass(frozen=True)
class CameraConfig:
    camera_id: str
    source: str
    fps: float | None = 10.0
    max_width: int | None = 640
    jpeg_quality: int = 85
    encoding: Encoding = Encoding.JPEG
    loop: bool = False
    max_frames: int | None = None
    reconnect_initial_s: float = 0.5
    reconnect_max_s: float = 30.0
    #: Frames kept for the broker while it is away (beyond those Kafka's client holds).
    buffer_frames: int = 512
    #: What a full buffer does: block the camera, or drop its oldest frame (counted).
    buffer_policy: BufferPolicy = BufferPolicy.AUTO


@dataclass
class CameraStats:
    read: int = 0
    sent: int = 0
    failed: int = 0
    reconnects: int = 0
    #: Frames dropped from a full buffer (``drop_oldest``) or left in it at shutdown.
    dropped: int = 0
    #: Sends that failed and were put back in the buffer to be sent again.
    retried: int = 0
    last_error: str = ""
    #: Set when the camera stopped on an error that retrying cannot mend.
    permanent_error: str = ""
    finished: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


class CameraWorker(threading.Thread):
    def __init__(self, config: CameraConfig, sink: FrameSink, stop: threading.Event) -> None:
        super().__init__(name=f"camera-{config.camera_id}", daemon=True)
        self.config = config
        self.sink = sink
        self.stop_event = stop
        self.stats = CameraStats()
        self.seq = 0
        self.label = metric_label(config.camera_id)

    def run(self) -> None:
        cfg = self.config
        backoff = cfg.reconnect_initial_s
        while not self.stop_event.is_set() and not self._done():
            try:
                source = open_source(cfg.source, loop=cfg.loop)
                source.open()
            except Exception as exc:  # a broken camera must not kill the process
                failure, permanent = failure_of(exc)
                self._report(failure)
                self._record_error(f"open failed: {exc}")
                if permanent:
                    self.stats.permanent_error = str(exc)
                    break
                backoff = self._reconnect_after(backoff)
                continue
            self._report(None)
            sent_before = self.seq
            try:
                ended = self._pump(source)
            finally:
                source.close()
            if self.seq > sent_before:  # a connection that delivered frames: start backing off afresh
                backoff = cfg.reconnect_initial_s
            if ended and not source.spec.live and not cfg.loop:
                break  # a finite file is done
            if not self.stop_event.is_set() and not self._done():
                self._report(SourceFailure.STREAM_LOST)
                backoff = self._reconnect_after(backoff)
        self.stats.finished = True
        if not self.stats.permanent_error:  # a camera that is done is not down
            self._report(None)
            metrics.CAMERA_UP.remove(self.label)

    def _reconnect_after(self, backoff: float) -> float:
        metrics.SOURCE_RECONNECTS.labels(camera_id=self.label).inc()
        self.stats.reconnects += 1
        self.stop_event.wait(backoff)
        return min(backoff * 2, self.config.reconnect_max_s)

    def _report(self, failure: SourceFailure | None) -> None:
        """The camera is up (``failure`` None) or down for ``failure``."""
        metrics.CAMERA_UP.labels(camera_id=self.label).set(0 if failure else 1)
        for reason in metrics.DOWN_REASONS:
            is_it = failure is not None and reason == failure.value
            metrics.CAMERA_DOWN_REASON.labels(camera_id=self.label, reason=reason).set(int(is_it))

    def _done(self) -> bool:
        return self.config.max_frames is not None and self.seq >= self.config.max_frames

    def _pump(self, source: Source) -> bool:
        """Read until the source ends or fails (True) or we are told to stop (False)."""
        cfg = self.config
        labels = {"camera_id": self.label}
        period = 1.0 / cfg.fps if cfg.fps else 0.0
        native = source.native_fps
        # Files play at their own rate (sampled down to fps); a generator renders a frame only
        # when one is due; a live camera delivers at its own rate and is sampled down by time.
        file_step = max(1, round(native / cfg.fps)) if (native and cfg.fps and not source.spec.live) else 1
        index = 0
        next_due = time.monotonic()
        while not self.stop_event.is_set() and not self._done():
            if source.on_demand and file_step == 1:
                self._wait_until(next_due)
            image = source.read()
            if image is None:
                return True
            index += 1
            metrics.FRAMES_READ.labels(**labels).inc()
            self.stats.read += 1
            if not source.on_demand:
                now = time.monotonic()
                if now < next_due:
                    continue
                next_due = max(next_due + period, now)
            elif (index - 1) % file_step:
                continue
            else:
                self._wait_until(next_due)
                next_due = max(next_due + period, time.monotonic() - period)
            self._emit(image, source.truth())
        return False

    def _wait_until(self, due: float) -> None:
        delay = due - time.monotonic()
        if delay > 0:
            self.stop_event.wait(delay)

    def _emit(self, image: np.ndarray, truth: FrameTruth | None = None) -> None:
        cfg = self.config
        labels = {"camera_id": self.label}
        start = time.perf_counter()
        try:
            if cfg.max_width and image.shape[1] > cfg.max_width:
                scale = cfg.max_width / image.shape[1]
                image = cv2.resize(image, (cfg.max_width, round(image.shape[0] * scale)), interpolation=cv2.INTER_AREA)
                truth = truth.scaled(scale) if truth is not None else None
            frame = Frame.from_image(
                image,
                camera_id=cfg.camera_id,
                seq=self.seq,
                encoding=cfg.encoding,
                jpeg_quality=cfg.jpeg_quality,
                truth=truth,
            )
        except Exception as exc:
            metrics.FRAMES_FAILED.labels(camera_id=self.label, reason="encode").inc()
            self._record_error(f"encode failed: {exc}")
            return
        metrics.ENCODE_SECONDS.labels(**labels).observe(time.perf_counter() - start)
        self.seq += 1

        def done(error: BaseException | None) -> None:
            with self.stats.lock:
                if error is None:
                    self.stats.sent += 1
                    metrics.FRAMES_SENT.labels(**labels).inc()
                elif isinstance(error, FrameDropped):
                    self.stats.dropped += 1
                    metrics.FRAMES_FAILED.labels(camera_id=self.label, reason=error.reason).inc()
                else:
                    self.stats.failed += 1
                    self.stats.last_error = f"frame {frame.seq} not sent: {type(error).__name__}: {error}"
                    log.warning("camera %s: %s", cfg.camera_id, self.stats.last_error)
                    metrics.PRODUCE_ERRORS.labels(**labels).inc()
                    metrics.FRAMES_FAILED.labels(camera_id=self.label, reason="produce").inc()

        try:
            self.sink(frame, done)
        except Exception as exc:
            done(exc)

    def _record_error(self, message: str) -> None:
        self.stats.last_error = message
        log.warning("camera %s: %s", self.config.camera_id, message)


class FrameDropped(Exception):
    """A frame that never reached Kafka on purpose: its buffer was full (``drop_oldest``),
    or it was still waiting when ingest stopped."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"frame dropped: {reason}")
        self.reason = reason


@dataclass
class _Outbound:
    """One camera's frames on their way to Kafka."""

    worker: CameraWorker
    buffer: FrameBuffer[tuple[Frame, Callable[[BaseException | None], None]]]


def buffer_policy(camera: CameraConfig) -> BufferPolicy:
    """The camera's policy, ``auto`` resolved: a source that makes its frames when asked
    (a file, a generator) waits for room and loses none; a live one drops its oldest."""
    return camera.buffer_policy.resolved(live=not SourceSpec.parse(camera.source).on_demand)


class IngestRunner:
    """Runs one worker per camera and one sender for all of them, over an idempotent Kafka
    producer. While the broker is away, each camera's frames wait in its bounded buffer
    (policy per camera: ``block`` or ``drop_oldest``, every drop counted); a send that fails
    goes back to the front of its buffer and is tried again, so a broker restart loses
    nothing and needs no restart of ingest."""

    #: Frames handed to Kafka's client and not yet acknowledged, all cameras together.
    MAX_IN_FLIGHT = 128
    #: Pause after a failed send before the next one (the broker is likely away).
    RETRY_PAUSE_S = 0.5
    #: The longest broker outage ingest rides out without losing a frame in flight.
    DELIVERY_TIMEOUT_MS = 600_000

    def __init__(self, cameras: list[CameraConfig], bootstrap: str, topic: str) -> None:
        self.check(cameras)
        self.topic = topic
        # Idempotent, so the client's own retries never write a frame twice. A batch waits
        # for the broker up to DELIVERY_TIMEOUT_MS: kafka-python 3.0 cannot recover an
        # idempotent producer whose batches expired (its in-flight sends never complete),
        # so an outage must end before that; short blocking and reconnect waits use a broker
        # that comes back within seconds.
        self.producer = kafka_io.producer(
            bootstrap,
            enable_idempotence=True,
            retries=2**31 - 1,
            max_block_ms=5000,
            delivery_timeout_ms=self.DELIVERY_TIMEOUT_MS,
            request_timeout_ms=10000,
        )
        self.stop_event = threading.Event()
        self.cond = threading.Condition()
        self.in_flight = 0
        #: Set when the broker refused a frame (an authorization error): ingest stopped.
        self.refused: BaseException | None = None
        self._retry_at = 0.0
        self.outbound: list[_Outbound] = []
        for camera in cameras:
            worker = CameraWorker(camera, self._sink(len(self.outbound)), self.stop_event)
            self.outbound.append(_Outbound(worker, FrameBuffer(camera.buffer_frames, buffer_policy(camera))))
        self.workers = [o.worker for o in self.outbound]
        self.sender = threading.Thread(target=self._send_loop, name="ingest-sender", daemon=True)
        self._next = 0

    @staticmethod
    def check(cameras: list[CameraConfig]) -> None:
        """Raise ConfigError for what retrying cannot mend: duplicate or invalid camera ids,
        a negative fps, a URI with bad parameters, a file that is not a video."""
        ids = [c.camera_id for c in cameras]
        if len(set(ids)) != len(ids):
            raise ConfigError(f"camera ids must be unique, got {ids}")
        for camera in cameras:
            try:
                validate_camera_id(camera.camera_id)
            except VlmError as exc:
                raise ConfigError(str(exc), hint="camera ids are 1-128 printable characters") from None
            if camera.fps is not None and camera.fps < 0:
                raise ConfigError(f"camera {camera.camera_id!r}: fps {camera.fps} is negative", hint=FPS_HINT)
            if camera.buffer_frames < 1:
                raise ConfigError(
                    f"camera {camera.camera_id!r}: buffer_frames {camera.buffer_frames} must be at least 1"
                )
            # A typo in a URI or a file that is not a video fails now, not in a reconnect loop.
            try:
                probe_file(SourceSpec.parse(camera.source))
            except VlmError as exc:
                raise ConfigError(f"camera {camera.camera_id!r}: {exc}", hint=exc.hint or None) from None

    # -- cameras -> buffers ------------------------------------------------------------------
    def _sink(self, index: int) -> FrameSink:
        def enqueue(frame: Frame, done: Callable[[BaseException | None], None]) -> None:
            outbound = self.outbound[index]
            with self.cond:
                while (
                    outbound.buffer.full
                    and outbound.buffer.policy is BufferPolicy.BLOCK
                    and not self.stop_event.is_set()
                ):
                    self.cond.wait(0.5)
                dropped = outbound.buffer.put((frame, done))
                self._gauge(outbound)
                self.cond.notify_all()
            if dropped is not None:
                dropped[1](FrameDropped("buffer_full"))

        return enqueue

    def _gauge(self, outbound: _Outbound) -> None:
        metrics.BUFFERED.labels(camera_id=outbound.worker.label).set(len(outbound.buffer))

    # -- buffers -> Kafka --------------------------------------------------------------------
    def _send_loop(self) -> None:
        name_thread()
        while True:
            with self.cond:
                item = self._take()
                while item is None:
                    if self.stop_event.is_set() and self._drained():
                        return
                    self.cond.wait(0.2)
                    item = self._take()
                outbound, (frame, done) = item
                self.in_flight += 1
            try:
                future = kafka_io.send_frame(self.producer, self.topic, frame)
            except Exception as exc:  # no metadata within max_block_ms: the broker is away
                self._failed(outbound, frame, done, exc)
                continue
            future.add_callback(lambda _meta, done=done: self._acked(done))
            future.add_errback(lambda exc, o=outbound, f=frame, d=done: self._failed(o, f, d, exc))

    def _take(self) -> tuple[_Outbound, tuple[Frame, Callable[[BaseException | None], None]]] | None:
        """The next frame to send, round robin over the cameras (lock held)."""
        if self.in_flight >= self.MAX_IN_FLIGHT or time.monotonic() < self._retry_at:
            return None
        for step in range(len(self.outbound)):
            outbound = self.outbound[(self._next + step) % len(self.outbound)]
            was_full = outbound.buffer.full
            entry = outbound.buffer.take()
            if entry is not None:
                self._next = (self._next + step + 1) % len(self.outbound)
                self._gauge(outbound)
                if was_full:
                    self.cond.notify_all()  # room for a camera blocked on it
                return outbound, entry
        return None

    def _drained(self) -> bool:
        return self.in_flight == 0 and not any(len(o.buffer) for o in self.outbound)

    def _acked(self, done: Callable[[BaseException | None], None]) -> None:
        with self.cond:
            self.in_flight -= 1
            self.cond.notify_all()
        done(None)

    def _failed(
        self, outbound: _Outbound, frame: Frame, done: Callable[[BaseException | None], None], exc: BaseException
    ) -> None:
        """A send that failed goes back to the front of its camera's buffer; one the broker
        refused (this principal may not write the topic) stops ingest instead: retrying
        cannot mend it, and the CLI reports it."""
        if isinstance(exc, AuthorizationError):
            with self.cond:
                self.in_flight -= 1
                if self.refused is None:
                    self.refused = exc
                    log.error("Kafka refused a frame on %s, stopping ingest: %s", self.topic, exc)
                self.stop_event.set()
                self.cond.notify_all()
            done(FrameDropped("refused"))
            return
        with self.cond:
            self.in_flight -= 1
            dropped = outbound.buffer.requeue((frame, done))
            self._retry_at = time.monotonic() + self.RETRY_PAUSE_S
            self._gauge(outbound)
            self.cond.notify_all()
        worker = outbound.worker
        with worker.stats.lock:
            worker.stats.retried += 1
            worker.stats.last_error = f"send failed, will retry: {exc}"
        metrics.PRODUCE_ERRORS.labels(camera_id=worker.label).inc()
        if dropped is not None:
            done(FrameDropped("buffer_full"))

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self.sender.start()
        for worker in self.workers:
            worker.start()

    def all_finished(self) -> bool:
        return all(w.stats.finished for w in self.workers)

    def buffered(self) -> int:
        with self.cond:
            return self.in_flight + sum(len(o.buffer) for o in self.outbound)

    def wait(self, timeout: float | None = None) -> bool:
        """Until every camera is done and every frame it read is acknowledged (or dropped)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for worker in self.workers:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            worker.join(remaining)
        with self.cond:
            while not self._drained():
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                self.cond.wait(0.2 if remaining is None else min(0.2, remaining))
            # Drained means every frame's send was acknowledged (or dropped, counted): no
            # flush, which kafka-python can leave waiting on a batch across a broker restart.
            return self.all_finished() and self._drained()

    def stop(self, drain_s: float = 10.0) -> None:
        """Stop the cameras, give the buffered frames ``drain_s`` to reach Kafka, and count
        what is left as dropped at shutdown."""
        self.stop_event.set()
        for worker in self.workers:
            worker.join(5)
        self.sender.join(drain_s)
        left: list[Callable[[BaseException | None], None]] = []
        with self.cond:
            for outbound in self.outbound:
                while (entry := outbound.buffer.take()) is not None:
                    left.append(entry[1])
                self._gauge(outbound)
        reason = "refused" if self.refused else "shutdown"
        for done in left:
            done(FrameDropped(reason))
        if left:
            log.warning("ingest stopped with %d frames not yet in Kafka (counted as dropped)", len(left))
        self.producer.flush(10)
        self.producer.close(10)
