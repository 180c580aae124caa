"""Camera workers. A failing camera reconnects with backoff and never stops the others."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np

from services import kafka_io
from services.ingest import metrics
from vlm_core.contracts.frame import Encoding, Frame, validate_camera_id
from vlm_core.contracts.truth import FrameTruth
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


@dataclass
class CameraStats:
    read: int = 0
    sent: int = 0
    failed: int = 0
    reconnects: int = 0
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
                else:
                    self.stats.failed += 1
                    self.stats.last_error = str(error)
                    metrics.PRODUCE_ERRORS.labels(**labels).inc()
                    metrics.FRAMES_FAILED.labels(camera_id=self.label, reason="produce").inc()

        try:
            self.sink(frame, done)
        except Exception as exc:
            done(exc)

    def _record_error(self, message: str) -> None:
        self.stats.last_error = message
        log.warning("camera %s: %s", self.config.camera_id, message)


class IngestRunner:
    """Runs one worker per camera and a shared Kafka producer."""

    def __init__(self, cameras: list[CameraConfig], bootstrap: str, topic: str) -> None:
        self.check(cameras)
        self.topic = topic
        self.producer = kafka_io.producer(bootstrap)
        self.stop_event = threading.Event()
        self.workers = [CameraWorker(c, self._send, self.stop_event) for c in cameras]

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
            # A typo in a URI or a file that is not a video fails now, not in a reconnect loop.
            try:
                probe_file(SourceSpec.parse(camera.source))
            except VlmError as exc:
                raise ConfigError(f"camera {camera.camera_id!r}: {exc}", hint=exc.hint or None) from None

    def _send(self, frame: Frame, done: Callable[[BaseException | None], None]) -> None:
        future = kafka_io.send_frame(self.producer, self.topic, frame)
        future.add_callback(lambda _meta: done(None))
        future.add_errback(done)

    def start(self) -> None:
        for worker in self.workers:
            worker.start()

    def all_finished(self) -> bool:
        return all(w.stats.finished for w in self.workers)

    def wait(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        for worker in self.workers:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            worker.join(remaining)
        self.producer.flush()
        return self.all_finished()

    def stop(self) -> None:
        self.stop_event.set()
        for worker in self.workers:
            worker.join(5)
        self.producer.flush(10)
        self.producer.close(10)
