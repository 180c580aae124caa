"""``vlm bench view``: does the live view cost the pipeline anything, and does a stalled
browser cost the view anything?

Two live synthetic cameras stream through the real pipeline at a fixed rate. Each run
measures two phases of the same length, in turn: without the view, and with the view
(``vlm view``, its own process) serving ``viewers`` WebSocket viewers, ``stalled`` of
which complete the handshake and then never read a byte. Reported per phase: the
pipeline's results per second and latency; with the view: its resident memory over the
phase, each reading viewer's frames per second, and the frames the view skipped for slow
viewers.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from vlm_core.config import LocalSettings
from vlm_core.contracts.task import Task
from vlm_core.cpu import Host, describe_host
from vlm_core.errors import ConfigError, InfrastructureError
from vlm_core.pipeline import model_pipeline_args


@dataclass
class PhaseFigures:
    viewers: int
    stalled: int
    results_per_s: float
    latency_p50_ms: float
    latency_p99_ms: float
    view_rss_mb: list[float] = field(default_factory=list)
    viewer_fps: list[float] = field(default_factory=list)
    stalled_bytes: list[int] = field(default_factory=list)
    view_skipped: float | None = None


@dataclass
class ViewBenchReport:
    cameras: int
    fps_per_camera: float
    frame_size: str
    phase_s: float
    runs: list[dict[str, PhaseFigures]]
    summary: dict[str, Any]
    command: str = ""
    host: Host = field(default_factory=describe_host)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class ResultMeter(threading.Thread):
    """Results per second and latencies on the results topic, from now on."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(daemon=True)
        from services.kafka_io import topic_reader

        self.reader, _ = topic_reader(bootstrap, topic, from_beginning=False)
        self.reader.poll(timeout_ms=100)
        self.halt = threading.Event()
        self.samples: list[tuple[float, float]] = []  # (arrival wall time, latency ms)

    def run(self) -> None:
        try:
            while not self.halt.is_set():
                for records in self.reader.poll(timeout_ms=200).values():
                    now = time.time()
                    for rec in records:
                        doc = json.loads(rec.value)
                        self.samples.append((now, float(doc["processed_ts_ms"] - doc["capture_ts_ms"])))
        finally:
            self.reader.close()

    def window(self, start: float, end: float) -> tuple[float, float, float]:
        lats = [lat for ts, lat in self.samples if start <= ts < end]
        if not lats:
            return 0.0, float("nan"), float("nan")
        return len(lats) / (end - start), float(np.percentile(lats, 50)), float(np.percentile(lats, 99))


async def _viewers(url: str, reading: int, stalled: int, seconds: float) -> tuple[list[float], list[int]]:
    """``reading`` viewers count binary frames for ``seconds``; ``stalled`` viewers send the
    WebSocket handshake and never read."""
    import websockets

    host, port = url.split("//", 1)[1].split("/", 1)[0].split(":")
    stalled_socks = []
    for _ in range(stalled):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window: it fills at once
        sock.connect((host, int(port)))
        sock.sendall(
            f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        stalled_socks.append(sock)

    async def one() -> float:
        frames = 0
        ws_url = url.replace("http://", "ws://").rstrip("/") + "/ws"
        async with websockets.connect(ws_url, max_size=None) as ws:
            deadline = time.monotonic() + seconds
            while (left := deadline - time.monotonic()) > 0:
                try:
                    message = await asyncio.wait_for(ws.recv(), timeout=left)
                except TimeoutError:
                    break
                frames += isinstance(message, bytes)
        return frames / seconds

    fps = await asyncio.gather(*(one() for _ in range(reading)))
    received = []
    for sock in stalled_socks:
        sock.setblocking(False)
        got = 0
        try:
            while chunk := sock.recv(1 << 20):  # what sat in the kernel's buffer, unread
                got += len(chunk)
        except BlockingIOError:
            pass
        received.append(got)
        sock.close()
    return list(fps), received


def _skipped(url: str) -> float:
    with urllib.request.urlopen(url + "metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith("vlm_view_frames_skipped_total"):
                return float(line.split()[-1])
    return 0.0


def run_view_bench(
    *,
    settings: LocalSettings,
    viewers: int = 20,
    stalled: int = 1,
    runs: int = 3,
    phase_s: float = 30.0,
    fps: float = 10.0,
    width: int = 320,
    height: int = 240,
    progress: Any = print,
    command: str = "",
) -> ViewBenchReport:
    from services import kafka_io
    from services.bench import bench_spec
    from services.inference import deploy
    from services.ingest.worker import CameraConfig, IngestRunner
    from services.localstack import LocalStack

    if not 0 <= stalled <= viewers or viewers < 1:
        raise ConfigError("--viewers must be at least 1 and --stalled between 0 and --viewers")
    if runs < 1 or phase_s < 5:
        raise ConfigError("--runs must be at least 1 and --phase-seconds at least 5")
    LocalStack(settings).up(["kafka", "ray"])
    tag = uuid.uuid4().hex[:8]
    topics = kafka_io.private_topics(f"benchview.{tag}")
    names = kafka_io.ensure_pipeline_topics(settings.bootstrap_servers, topics)
    spec = bench_spec(Task.DETECTION, None)
    args = model_pipeline_args(
        settings.bootstrap_servers,
        topics,
        Task.DETECTION,
        {"spec": spec.to_dict(), "deployment": {"max_batch_size": 8, "num_cpus": 0.5, "torch_threads": 1}},
        processor={"group_id": f"benchview-{tag}", "batch_size": 8, "num_cpus": 0.25},
    )
    config = Path(tempfile.mkdtemp()) / "pipeline.yaml"
    config.write_text(yaml.safe_dump({"applications": [{"name": "vlm", "args": args}]}))
    app = f"benchview-{tag}"
    deploy.connect(settings.ray_address)
    progress(f"pipeline: {spec.arch} (random init), 2 cameras at {fps:g} fps, {width}x{height}")
    deploy.deploy(args, app_name=app)
    cameras = IngestRunner(
        [
            CameraConfig(f"view-cam-{i}", f"synthetic://?seed={i}&width={width}&height={height}", fps=fps)
            for i in range(2)
        ],
        settings.bootstrap_servers,
        topics.frames,
    )
    meter = ResultMeter(settings.bootstrap_servers, topics.results)
    meter.start()
    cameras.start()
    all_runs: list[dict[str, PhaseFigures]] = []
    try:
        time.sleep(10)  # warm-up: models loaded, the stream steady
        for run in range(runs):
            figures: dict[str, PhaseFigures] = {}
            start = time.time()
            time.sleep(phase_s)
            rate, p50, p99 = meter.window(start, time.time())
            figures["without_view"] = PhaseFigures(0, 0, round(rate, 2), round(p50, 1), round(p99, 1))
            progress(f"run {run + 1}/{runs} without the view: {rate:.1f} results/s, p50 {p50:.0f} ms, p99 {p99:.0f} ms")
            figures["with_view"] = _phase_with_view(
                config, settings, meter, viewers=viewers, stalled=stalled, phase_s=phase_s
            )
            v = figures["with_view"]
            progress(
                f"run {run + 1}/{runs} with {viewers} viewers ({stalled} stalled): {v.results_per_s:.1f} results/s, "
                f"p50 {v.latency_p50_ms:.0f} ms, p99 {v.latency_p99_ms:.0f} ms; view RSS "
                f"{min(v.view_rss_mb):.0f}-{max(v.view_rss_mb):.0f} MB; viewer fps median "
                f"{np.median(v.viewer_fps):.1f} (min {min(v.viewer_fps):.1f})"
            )
            all_runs.append(figures)
    finally:
        cameras.stop()
        meter.halt.set()
        meter.join(5)
        deploy.delete(app)
        kafka_io.delete_topics(settings.bootstrap_servers, names)
    return ViewBenchReport(2, fps, f"{width}x{height}", phase_s, all_runs, _summary(all_runs), command)


def _phase_with_view(
    config: Path, settings: LocalSettings, meter: ResultMeter, *, viewers: int, stalled: int, phase_s: float
) -> PhaseFigures:
    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    env = {k: v for k, v in os.environ.items() if k != "VLM_VIEW_TOKEN"}  # loopback, no token
    view = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "view", "--port", str(port), "--config", str(config),
         "--bootstrap", settings.bootstrap_servers],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(url + "healthz", timeout=2):
                    break
            except OSError as exc:
                if view.poll() is not None or time.monotonic() > deadline:
                    raise InfrastructureError(f"the view did not start: {exc}") from None
                time.sleep(0.3)
        rss: list[float] = []
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.wait(1.0):
                rss.append(round(_rss_mb(view.pid), 1))

        sampler = threading.Thread(target=sample, daemon=True)
        start = time.time()
        sampler.start()
        fps, received = asyncio.run(_viewers(url, viewers - stalled, stalled, phase_s))
        end = time.time()
        sampling.set()
        sampler.join(5)
        rate, p50, p99 = meter.window(start, end)
        return PhaseFigures(
            viewers,
            stalled,
            round(rate, 2),
            round(p50, 1),
            round(p99, 1),
            view_rss_mb=rss,
            viewer_fps=[round(f, 2) for f in fps],
            stalled_bytes=received,
            view_skipped=_skipped(url),
        )
    finally:
        view.terminate()
        try:
            view.wait(10)
        except subprocess.TimeoutExpired:
            view.kill()


def _summary(runs: list[dict[str, PhaseFigures]]) -> dict[str, Any]:
    def spread(values: list[float]) -> dict[str, float]:
        return {
            "median": round(float(np.median(values)), 2),
            "min": round(min(values), 2),
            "max": round(max(values), 2),
        }

    without = [r["without_view"] for r in runs]
    with_view = [r["with_view"] for r in runs]
    return {
        "results_per_s_without_view": spread([p.results_per_s for p in without]),
        "results_per_s_with_view": spread([p.results_per_s for p in with_view]),
        "throughput_ratio_with_over_without": spread(
            [w.results_per_s / max(1e-9, o.results_per_s) for w, o in zip(with_view, without, strict=True)]
        ),
        "latency_p50_ms_without_view": spread([p.latency_p50_ms for p in without]),
        "latency_p50_ms_with_view": spread([p.latency_p50_ms for p in with_view]),
        "viewer_fps_median": spread([float(np.median(p.viewer_fps)) for p in with_view]),
        "viewer_fps_min": spread([min(p.viewer_fps) for p in with_view]),
        "view_rss_mb_max": spread([max(p.view_rss_mb) for p in with_view]),
        "view_rss_mb_growth": spread([p.view_rss_mb[-1] - p.view_rss_mb[0] for p in with_view]),
    }


def write_report(report: ViewBenchReport, path: Path | None) -> str:
    text = json.dumps(asdict(report), indent=2)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    return text
