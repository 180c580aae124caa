"""``vlm bench soak``: a long tracked run, watching for growth.

Synthetic cameras (items that cross, leave and come back) go through the real ingest
workers at a fixed rate into the real pipeline with tracking, a line and a zone, for the
given minutes. Every ``sample_s`` the processor replica reports its RSS and the encoded
size of its tracker state; at the end every result is read back and each camera's ids are
checked: an id that appears again after its track could have expired is a reused id.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vlm_core.config import LocalSettings
from vlm_core.contracts.result import Result
from vlm_core.cpu import Host, describe_host
from vlm_core.pipeline import TrackingSettings


@dataclass
class SoakSample:
    elapsed_s: float
    rss_mb: float
    tracker_state_bytes: int
    tracked_cameras: int
    results: int


@dataclass
class SoakReport:
    minutes: float
    cameras: int
    fps: float
    model: str
    results: int
    frames_sent: int
    ids_issued: int
    ids_reused: int
    rss_mb_start: float
    rss_mb_end: float
    state_bytes_start: int
    state_bytes_end: int
    samples: list[SoakSample] = field(default_factory=list)
    command: str = ""
    host: Host = field(default_factory=describe_host)


def reused_ids(results: list[Result], max_lost_s: float) -> tuple[int, int]:
    """(ids issued, ids reused) over every camera: an id seen again later than its track
    could have stayed lost was handed out twice."""
    last_seen: dict[tuple[str, int], int] = {}
    reused: set[tuple[str, int]] = set()
    for result in sorted(results, key=lambda r: (r.camera_id, r.capture_ts_ms)):
        for det in result.detection.detections if result.detection else ():
            if det.track_id is None:
                continue
            key = (result.camera_id, det.track_id)
            previous = last_seen.get(key)
            if previous is not None and result.capture_ts_ms - previous > (max_lost_s + 1) * 1000:
                reused.add(key)
            last_seen[key] = result.capture_ts_ms
    return len(last_seen), len(reused)


def run_soak(
    *,
    minutes: float,
    cameras: int,
    fps: float,
    model_name: str,
    settings: LocalSettings,
    sample_s: float = 60.0,
    progress: Callable[[str], None] = print,
    command: str = "",
) -> SoakReport:
    from services import kafka_io
    from services.bench_tracking import analytics_config, production_detector, tracked_detector_args
    from services.inference import deploy
    from services.ingest.worker import CameraConfig, IngestRunner
    from services.localstack import LocalStack

    production = production_detector(settings, model_name)
    LocalStack(settings).up(["kafka", "ray"])
    tag = uuid.uuid4().hex[:8]
    topics = kafka_io.private_topics(f"soak.{tag}")
    names = kafka_io.ensure_pipeline_topics(settings.bootstrap_servers, topics)
    # Live cameras: a frame older than 2 s when dequeued is dropped (and counted), so a
    # detector slower than the cameras sets the rate without a backlog building up.
    camera = {
        "tasks": ["detection"],
        "drop_policy": "drop_stale",
        "max_age_ms": 2000,
        "tracking": {},
        "analytics": analytics_config(),
    }
    args = tracked_detector_args(settings, topics, production, camera, group_id=f"soak-{tag}")
    app = f"soak-{tag}"
    deploy.connect(settings.ray_address)
    deploy.deploy(args, app_name=app)
    runner = IngestRunner(
        [
            CameraConfig(f"soak-{i}", f"synthetic://?seed={20 + i}&items=5&exits=1&crossings=1", fps=fps)
            for i in range(cameras)
        ],
        settings.bootstrap_servers,
        topics.frames,
    )
    samples: list[SoakSample] = []
    started = time.monotonic()
    try:
        runner.start()
        try:
            while (elapsed := time.monotonic() - started) < minutes * 60:
                time.sleep(min(sample_s, max(0.0, minutes * 60 - elapsed)))
                try:
                    stats = deploy.processor_stats(app)
                except Exception as exc:  # a replica restarting: the next sample tells
                    progress(f"{time.monotonic() - started:.0f}s: no stats ({type(exc).__name__}: {exc})")
                    continue
                sample = SoakSample(
                    round(time.monotonic() - started, 1),
                    round(stats.rss_mb, 1),
                    stats.tracker_state_bytes,
                    stats.tracked_cameras,
                    stats.results_produced,
                )
                samples.append(sample)
                progress(
                    f"{sample.elapsed_s:.0f}s: rss {sample.rss_mb:.0f} MB, tracker state "
                    f"{sample.tracker_state_bytes} B ({sample.tracked_cameras} cameras), {sample.results} results"
                )
        finally:
            runner.stop()
        sent = sum(w.stats.sent for w in runner.workers)
        time.sleep(5)
        records, _ends = kafka_io.read_to_end(settings.bootstrap_servers, topics.results, timeout_s=600)
        results = [Result.from_bytes(r.value) for r in records]
    finally:  # whatever happened, the app and its topics go
        deploy.delete(app)
        kafka_io.delete_topics(settings.bootstrap_servers, names)
    issued, reused = reused_ids(results, TrackingSettings().max_lost_s)
    first = samples[0] if samples else SoakSample(0, 0, 0, 0, 0)
    last = samples[-1] if samples else first
    return SoakReport(
        minutes=minutes,
        cameras=cameras,
        fps=fps,
        model=f"{model_name}@{production.version}",
        results=len(results),
        frames_sent=sent,
        ids_issued=issued,
        ids_reused=reused,
        rss_mb_start=first.rss_mb,
        rss_mb_end=last.rss_mb,
        state_bytes_start=first.tracker_state_bytes,
        state_bytes_end=last.tracker_state_bytes,
        samples=samples,
        command=command,
    )


def write_soak(report: SoakReport, path: Path | None) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(report), indent=2) + "\n")
