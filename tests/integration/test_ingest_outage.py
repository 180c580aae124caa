"""Ingest while the single broker is down: frames wait in each camera's buffer, a broker
restart needs no restart of ingest, and every frame arrives once (or is counted dropped)."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections import Counter

import pytest

from services import kafka_io
from services.ingest.worker import CameraConfig, IngestRunner
from services.localstack import LocalStack
from vlm_core.buffering import BufferPolicy
from vlm_core.config import LocalSettings
from vlm_core.contracts.frame import Frame

pytestmark = [pytest.mark.integration, pytest.mark.faults]

OUTAGE_S = 20.0


def _kill_broker_for(settings: LocalSettings, seconds: float) -> float:
    """SIGKILL the broker, keep it down ``seconds``, start it again; returns the seconds
    from the restart until it answered."""
    kafka = LocalStack(settings).services["kafka"]
    pid = kafka.pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    time.sleep(seconds)
    kafka.stop()  # the PID file of the dead process
    started = time.monotonic()
    kafka.start()
    return time.monotonic() - started


def test_ingest_keeps_every_frame_through_a_20s_broker_outage(kafka_bootstrap: str, settings: LocalSettings) -> None:
    topic = f"t.{uuid.uuid4().hex[:8]}.frames"
    kafka_io.ensure_topics(kafka_bootstrap, [kafka_io.TopicSpec(topic, 2)])
    fps, frames = 20.0, 600  # 30 s of frames; the outage starts 5 s in
    cameras = [
        CameraConfig(
            "kept",
            "synthetic://?seed=1&width=96&height=64",
            fps=fps,
            max_frames=frames,
            buffer_policy=BufferPolicy.BLOCK,
        ),
        CameraConfig(
            "newest",
            "synthetic://?seed=2&width=96&height=64",
            fps=fps,
            max_frames=frames,
            buffer_frames=100,
            buffer_policy=BufferPolicy.DROP_OLDEST,
        ),
    ]
    runner = IngestRunner(cameras, kafka_bootstrap, topic)
    runner.start()
    try:
        time.sleep(5)
        restart_s = _kill_broker_for(settings, OUTAGE_S)
        assert runner.wait(timeout=180), "ingest did not deliver its buffered frames after the broker returned"
    finally:
        runner.stop()
    delivered = sum(w.stats.sent for w in runner.workers)  # what the broker acknowledged
    records = kafka_io.read_records(kafka_bootstrap, topic, delivered, timeout_s=60, linger_ms=1000)
    seqs = {camera: Counter() for camera in ("kept", "newest")}
    for rec in records:
        frame = Frame.from_kafka(rec.key, rec.value, rec.headers)
        seqs[frame.camera_id][frame.seq] += 1
    kept, newest = runner.workers
    print(
        f"broker back in {restart_s:.1f}s; kept: sent {kept.stats.sent}, retried {kept.stats.retried}; "
        f"newest: sent {newest.stats.sent}, dropped {newest.stats.dropped}, retried {newest.stats.retried}"
    )
    # block: every frame, once, with no one restarting ingest.
    assert sorted(seqs["kept"]) == list(range(frames)), f"lost {frames - len(seqs['kept'])} frames"
    assert max(seqs["kept"].values()) == 1, "the idempotent producer wrote a frame twice"
    assert kept.stats.dropped == 0 and kept.stats.sent == frames
    # drop_oldest: the newest frames survive; what did not is counted, nothing vanishes.
    assert newest.stats.dropped > 0, "a 20 s outage at 20 fps overflows a 100-frame buffer"
    assert len(seqs["newest"]) + newest.stats.dropped == frames
    assert max(seqs["newest"].values()) == 1
    assert frames - 1 in seqs["newest"], "the newest frame is kept"
    kafka_io.delete_topics(kafka_bootstrap, [topic])
