"""Ingest's own Prometheus metrics (prometheus-client, served on its own port)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from vlm_core.sources import SourceFailure

REGISTRY = CollectorRegistry()

FRAMES_READ = Counter("vlm_ingest_frames_read", "Frames read from the camera source", ["camera_id"], registry=REGISTRY)
FRAMES_SENT = Counter(
    "vlm_ingest_frames_sent", "Frames acknowledged by the Kafka broker", ["camera_id"], registry=REGISTRY
)
FRAMES_FAILED = Counter(
    "vlm_ingest_frames_failed",
    "Frames that never reached Kafka, by reason (encode, buffer_full, shutdown)",
    ["camera_id", "reason"],
    registry=REGISTRY,
)
SOURCE_RECONNECTS = Counter(
    "vlm_ingest_source_reconnects", "Times a camera source was reopened", ["camera_id"], registry=REGISTRY
)
CAMERA_UP = Gauge(
    "vlm_ingest_camera_up",
    "1 while the camera's source is open and delivering frames, 0 while it is down",
    ["camera_id"],
    registry=REGISTRY,
)
CAMERA_DOWN_REASON = Gauge(
    "vlm_ingest_camera_down_reason",
    "1 for the reason a camera is down (open_failed, stream_lost, not_a_video, bad_config), 0 for the others",
    ["camera_id", "reason"],
    registry=REGISTRY,
)
DOWN_REASONS = tuple(f.value for f in SourceFailure)
BUFFERED = Gauge(
    "vlm_ingest_buffered_frames",
    "Frames waiting in the camera's buffer for the broker",
    ["camera_id"],
    registry=REGISTRY,
)
PRODUCE_ERRORS = Counter("vlm_ingest_produce_errors", "Kafka produce errors", ["camera_id"], registry=REGISTRY)
ENCODE_SECONDS = Histogram(
    "vlm_ingest_encode_seconds",
    "Time to resize and encode one frame",
    ["camera_id"],
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25),
    registry=REGISTRY,
)


def serve_metrics(port: int, host: str = "127.0.0.1") -> None:
    start_http_server(port, addr=host, registry=REGISTRY)
