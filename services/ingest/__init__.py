"""Camera ingest: one OpenCV reader thread per source, frames keyed by camera id to Kafka."""

from services.ingest.worker import CameraConfig, CameraStats, CameraWorker, IngestRunner

__all__ = ["CameraConfig", "CameraStats", "CameraWorker", "IngestRunner"]
