"""``vlm bench pipeline``: the raw model versus the full pipeline, measured in one run.

1. raw: the Predictor in a tight batched loop over decoded frames, same batch size, one
   torch thread (the model replica's budget). This is the ceiling.
2. pipeline: ingest (synthetic cameras -> JPEG -> Kafka, run first and timed on its own)
   then Kafka -> StreamProcessor (decode, validate) -> model deployment -> results on
   Kafka, on fresh topics. Throughput is measured between the first and the last result
   produced (steady state, like the raw loop after warm-up).
3. latency: a second stream, paced at a fraction of the measured pipeline rate
   (``--latency-load``, half by default on the command line), gives end-to-end latency
   (capture to result produced) without a backlog. Its frames are rendered and encoded
   before the stage and only sent at the pace (:class:`PacedCamera`), as a camera that
   encodes on its own hardware would; the capture time is stamped as each is sent.

Where the time goes: CPU milliseconds per frame of every process (``/proc/<pid>/stat``),
and wall and CPU milliseconds per frame of each stage inside the processor and the model
replica (their :class:`~vlm_core.stream.profile.StageProfile`), over the drain.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from vlm_core import metrics as m
from vlm_core.config import LocalSettings
from vlm_core.contracts.frame import Frame
from vlm_core.contracts.task import Task
from vlm_core.cpu import (
    HOST_IDLE,
    HOST_STEAL,
    CpuMeter,
    CpuPlacement,
    CpuSample,
    CpuTimeline,
    Host,
    ThreadMeter,
    cores_over,
    describe_host,
    model_process_memory,
    name_thread,
    pin_thread,
    place_threads,
    restore_threads,
)
from vlm_core.errors import ConfigError
from vlm_core.models.spec import Graph, ModelSpec
from vlm_core.pipeline import (
    Delivery,
    DeploymentSettings,
    ModelHosting,
    ModelInput,
    ProcessorSettings,
    model_pipeline_args,
)
from vlm_core.registry import ModelRegistry
from vlm_core.stream import BatchTiming, SendRule
from vlm_core.stream.collector import watch_collections
from vlm_core.stream.profile import StageProfile, StageTotals, per_frame_ms
from vlm_core.tasks import get_profile

# The model (``serving_arch``) and the frames per batch (``bench_batch_size``) come from
# each task's profile. Batches are the same for the raw loop and the pipeline. A small
# classifier spends ~3 ms a frame, so per-batch costs (a Serve call, a Kafka poll and
# produce) weigh on it at 8: it benches at 16, the processor's batch in
# deploy/serve/pipeline.yaml too.
LATENCY_LOAD = 0.25
BENCH_CLASS_COUNT = 10
MIN_FRAMES = 50
#: Frames through the pipeline before the first measured run (``run_repeated``).
WARM_UP_FRAMES = 3000
#: The warm-up pass's raw rate: given, so it runs no raw loop; its report is dropped.
_NOT_MEASURED = 1.0


@dataclass
class BenchReport:
    task: str
    model: str
    frames: int
    batch_size: int
    frame_size: str
    raw_fps: float
    ingest_fps: float
    pipeline_fps: float
    ratio: float
    frames_lost: int
    duplicates: int
    mean_batch_size: float
    latency_ms: dict[str, float] = field(default_factory=dict)
    latency_rate_fps: float = 0.0
    #: The rate the paced camera kept, from its frames' capture stamps (below the asked
    #: rate where its sender fell behind).
    latency_sent_fps: float = 0.0
    #: The paced stream's p99 over the raw loop's time for one batch (its latency target).
    latency_p99_per_raw_batch: float = 0.0
    #: Median milliseconds per stage of the paced stream's results (their timing_ms).
    latency_p50_by_stage_ms: dict[str, float] = field(default_factory=dict)
    #: The same over the slowest 1 % of them (latency at or above the p99): where the
    #: tail's time goes.
    latency_tail_by_stage_ms: dict[str, float] = field(default_factory=dict)
    #: Seconds into the paced stream at which those slowest frames were captured.
    latency_tail_at_s: list[float] = field(default_factory=list)
    #: Mean cores each process used over the paced stream, with the host's stolen
    #: (``host steal``: the hypervisor gave them to other guests) and idle cores; then the
    #: same over the slowest 1 % of its frames' spans, capture to result (what ran, or
    #: did not, while they waited); and the samples they come from (every 0.1 s, seconds
    #: after the first capture).
    latency_cores: dict[str, float] = field(default_factory=dict)
    latency_tail_cores: dict[str, float] = field(default_factory=dict)
    latency_cores_timeline: list[dict[str, float]] = field(default_factory=list)
    #: The paced stream's batches as the processor timed them (``BatchTiming``): median
    #: frames, wait (oldest frame's capture to send) and round trip (send to answer) of
    #: all of them, and of those that carried the slowest 1 % of frames; and each batch
    #: (sent at ``t_s`` after the first capture).
    latency_batch_medians: dict[str, float] = field(default_factory=dict)
    latency_tail_batch_medians: dict[str, float] = field(default_factory=dict)
    latency_batches: list[dict[str, float | str]] = field(default_factory=list)
    weights: str = "random init (throughput only)"
    #: The cameras were tracked (with a line and a zone) in the pipeline run.
    tracking: bool = False
    delivery: str = Delivery.AT_LEAST_ONCE.value
    #: Detection only: mean boxes per result, and of them those with a track id (the
    #: tracker's work in the tracked run).
    detections_per_frame: float | None = None
    tracked_per_frame: float | None = None
    cameras: int = 2
    #: What the processor sent the model replica: pixels or checked encoded frames.
    model_input: str = ModelInput.DECODED.value
    model_hosting: str = ModelHosting.DEPLOYMENTS.value
    #: How the model ran on the CPU, in the raw loop and in the replica (eager or frozen).
    graph: str = Graph.FROZEN.value
    #: How long the processor's fetch of the frames topic waited at the broker when empty.
    fetch_max_wait_ms: int = ProcessorSettings().fetch_max_wait_ms
    #: How long the model replica could spend warming up at each smaller batch size.
    warmup_s: float = DeploymentSettings().warmup_s
    #: The model deployment's ``max_batch_size``: frames per model call, concurrent
    #: requests merged (the processor's batch size unless ``--max-batch-size`` was given).
    max_batch_size: int = 0
    #: The paced stream's rate as a fraction of the measured pipeline rate (with
    #: ``--latency-fps``, the fraction that rate was).
    latency_load: float = LATENCY_LOAD
    #: CPU milliseconds per frame by process: ingest (its own stage), then during the
    #: pipeline stage the broker(s), the processor replica, the model replica, the rest of
    #: Ray (daemons, Serve's controller), and this process reading the results.
    cpu_ms_per_frame: dict[str, float] = field(default_factory=dict)
    #: The pipeline stage's figures split by thread name, the busiest 5 of each process
    #: group and the rest as ``other threads`` (``"broker / C2 CompilerThre"``: the kernel
    #: keeps 15 characters); ingest's row is not split.
    thread_cpu_ms_per_frame: dict[str, float] = field(default_factory=dict)
    #: The same while the paced stream ran (its sender is in this process's figure).
    latency_cpu_ms_per_frame: dict[str, float] = field(default_factory=dict)
    latency_thread_cpu_ms_per_frame: dict[str, float] = field(default_factory=dict)
    #: Milliseconds per frame by stage inside the processor (``processor.decode``) and the
    #: model replica (``model.infer``) while the pipeline drained the frames topic: the
    #: stage's own thread's CPU time, and its wall time (waits included).
    stage_cpu_ms_per_frame: dict[str, float] = field(default_factory=dict)
    stage_wall_ms_per_frame: dict[str, float] = field(default_factory=dict)
    #: Of each stage's wall time, the time its thread was runnable and waited for a core.
    stage_run_queue_ms_per_frame: dict[str, float] = field(default_factory=dict)
    #: The same three over the paced stream's frames (the latency stage).
    latency_stage_cpu_ms_per_frame: dict[str, float] = field(default_factory=dict)
    latency_stage_wall_ms_per_frame: dict[str, float] = field(default_factory=dict)
    latency_stage_run_queue_ms_per_frame: dict[str, float] = field(default_factory=dict)
    #: Batches the processor sent to the models by the rule that sent them
    #: (``vlm_core.stream.SendRule``) while it drained the frames topic, and during the
    #: paced stream: how often a batch joined one at the models (``full``) rather than
    #: went after its answer (``answered``).
    batches_by_send_rule: dict[str, int] = field(default_factory=dict)
    latency_batches_by_send_rule: dict[str, int] = field(default_factory=dict)
    #: Frames the ingest read but never got into Kafka (sends that failed, drops): not the
    #: pipeline's to answer for, and not in ``frames_lost``.
    ingest_unsent: int = 0
    #: The processor replica's peak resident memory over the run.
    processor_peak_rss_mb: float = 0.0
    #: The CPUs the model replica's forward thread ran on (those the stack reserves for the
    #: model, or all of them), and the raw loop with it.
    forward_cpus: str = ""
    command: str = ""


def spread(values: list[float]) -> dict[str, float]:
    """Median, minimum and maximum of one figure over repeated runs."""
    return {
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
    }


#: Camera resolutions ``--frame-size`` accepts.
FRAME_SIZES = {"320x240": (320, 240), "1280x720": (1280, 720), "1920x1080": (1920, 1080)}


def parse_frame_size(text: str) -> tuple[int, int]:
    if text not in FRAME_SIZES:
        raise ConfigError(f"--frame-size {text!r} is not offered", hint=f"choose one of {', '.join(FRAME_SIZES)}")
    return FRAME_SIZES[text]


def bench_spec(task: Task, arch: str | None, registry_dir: Path | None = None) -> ModelSpec:
    """The benched model, with fixed weights that the raw loop and the model replica both
    load: two random initialisations differ in what they output, and a segmenter's or
    detector's post-processing costs what its output holds (classes present, boxes).
    ``arch`` as ``NAME@V`` is that registry version (an optimised one included)."""
    if arch is not None and "@" in arch:
        registry = ModelRegistry(registry_dir or LocalSettings.from_env().registry_dir)
        version = registry.resolve(arch)
        if version.task is not task:
            raise ConfigError(f"{arch} is a {version.task.value} model", hint=f"use --task {version.task.value}")
        return version.spec(registry.root)
    profile = get_profile(task)
    arch = arch or profile.defaults.serving_arch
    names = profile.bench_class_names(BENCH_CLASS_COUNT)
    spec = ModelSpec(task, arch, class_names=names, name=f"bench-{arch}", version="1")
    return replace(spec, weights=str(_bench_weights(spec)))


def _bench_weights(spec: ModelSpec) -> Path:
    import tempfile

    import torch

    from vlm_core.models import build_model
    from vlm_core.models.weights import save_state_dict

    path = Path(tempfile.gettempdir()) / "vlm-bench-weights" / f"{spec.arch}-{len(spec.class_names)}-seed0.safetensors"
    if not path.is_file():
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model, _ = build_model(spec)
        save_state_dict(model.state_dict(), path)  # atomic: a concurrent bench reads a whole file or none
    return path


def synthetic_frames(count: int, width: int, height: int) -> list[np.ndarray]:
    """The frames the pipeline's two synthetic cameras (seeds 0 and 1) send, interleaved."""
    from vlm_core.datasets.scenes import SceneConfig, SceneVideo

    videos = [SceneVideo(SceneConfig(width=width, height=height), seed=seed) for seed in (0, 1)]
    return [videos[i % 2].next().image for i in range(count)]


def measure_raw(
    spec: ModelSpec,
    images: list[np.ndarray],
    batch_size: int,
    graph: Graph = Graph.FROZEN,
    cpus: frozenset[int] | None = None,
) -> float:
    """The model's own frames a second over ``images`` on this thread: on ``cpus`` where
    the stack reserves CPUs for the model, since its forward passes run there."""
    import cv2
    import torch

    from vlm_core.tasks import build_predictor

    # The model replica's budget and allocator: one torch thread, OpenCV single-threaded.
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    model_process_memory()
    predictor = build_predictor(spec, graph=graph)
    previous = pin_thread(cpus) if cpus else None
    try:
        predictor.warmup(batch_size, images[0].shape[:2])
        return predictor.throughput(images, batch_size)
    finally:
        if previous is not None:
            pin_thread(previous)


def run_pipeline_bench(
    task: Task,
    arch: str | None,
    frames: int,
    *,
    batch_size: int | None = None,
    max_batch_size: int | None = None,
    width: int = 320,
    height: int = 240,
    latency_seconds: float = 10.0,
    latency_load: float = LATENCY_LOAD,
    latency_fps: float | None = None,
    cameras: int = 2,
    inflight: int = 2,
    tracking: bool = False,
    delivery: Delivery = Delivery.AT_LEAST_ONCE,
    model_input: ModelInput = ModelInput.DECODED,
    model_hosting: ModelHosting = ModelHosting.DEPLOYMENTS,
    graph: Graph = Graph.FROZEN,
    fetch_max_wait_ms: int | None = None,
    warmup_s: float | None = None,
    raw_fps: float | None = None,
    settings: LocalSettings,
    progress: Any = print,
    command: str = "",
) -> tuple[BenchReport, list[float]]:
    """One raw-vs-pipeline run. ``raw_fps`` given: the raw loop is not run again (a bench
    that compares pipelines against each other measures it once)."""
    from services import kafka_io
    from services.inference import deploy
    from services.ingest.worker import CameraConfig, IngestRunner
    from services.localstack import LocalStack

    if frames < MIN_FRAMES:
        raise ConfigError(f"--frames must be at least {MIN_FRAMES} for a meaningful measurement")
    if not 1 <= cameras <= frames // 10:
        raise ConfigError(f"--cameras {cameras}: give 1 to {frames // 10} (at least 10 frames each)")
    if not 0 < latency_load <= 1:
        raise ConfigError(f"--latency-load {latency_load}: give a fraction of the pipeline rate in (0, 1]")
    if latency_fps is not None and latency_fps <= 0:
        raise ConfigError(f"--latency-fps {latency_fps:g}: give a rate above 0 frames a second")
    if tracking and task is not Task.DETECTION:
        raise ConfigError("--tracking needs --task detection: tracks are made of detections")
    spec = bench_spec(task, arch, settings.registry_dir)
    placement = settings.placement()
    batch_size = batch_size or get_profile(task).defaults.bench_batch_size
    max_batch_size = max_batch_size or batch_size
    if max_batch_size < batch_size:
        raise ConfigError(
            f"--max-batch-size {max_batch_size} is below the batch size {batch_size}: one request carries a whole batch"
        )
    if raw_fps is None:
        progress(f"raw model: {spec.arch} ({graph.value}), batch {batch_size}, 1 torch thread, {frames} frames")
        images = synthetic_frames(min(frames, 400), width, height)
        images = (images * (frames // len(images) + 1))[:frames]
        raw_fps = measure_raw(spec, images, batch_size, graph, placement.model if placement else None)
        progress(f"raw: {raw_fps:.1f} fps")

    LocalStack(settings).up(["kafka", "ray"])
    watch_collections(_BENCH_PROFILE)
    tag = uuid.uuid4().hex[:8]
    topics = kafka_io.private_topics(f"bench.{tag}")
    names = kafka_io.ensure_pipeline_topics(settings.bootstrap_servers, topics)
    cameras_config: dict[str, Any] = {"default": {"tasks": [task.value]}}
    if tracking:
        from services.bench_tracking import analytics_config

        cameras_config["default"].update(tracking={}, analytics=analytics_config())
    args = model_pipeline_args(
        settings.bootstrap_servers,
        topics,
        task,
        {
            "spec": spec.to_dict(),
            "deployment": {
                "max_batch_size": max_batch_size,
                "num_cpus": 0.5,
                "max_ongoing_requests": 8,
                "torch_threads": 1,
                "graph": graph.value,
                **({"warmup_s": warmup_s} if warmup_s is not None else {}),
            },
        },
        processor={
            "group_id": f"bench-{tag}",
            "batch_size": batch_size,
            "max_inflight_batches": inflight,
            "num_cpus": 0.25,
            "delivery": delivery.value,
            "model_input": model_input.value,
            "model_hosting": model_hosting.value,
            **({"fetch_max_wait_ms": fetch_max_wait_ms} if fetch_max_wait_ms is not None else {}),
        },
        cameras=cameras_config,
    )
    app = f"bench-{tag}"
    camera_ids = [f"bench-cam-{i}" for i in range(cameras)]
    per_camera = frames // cameras
    total = per_camera * cameras
    # Stage 1, ingest: synthetic cameras through the real ingest workers into Kafka. It runs
    # before the processor starts so it does not share the two cores with the model; its
    # own rate is reported separately.
    progress(f"ingest: {total} frames from {cameras} synthetic cameras into Kafka...")
    ingest_cpu = CpuMeter({"ingest": [os.getpid()]})
    ingest_cpu.start()
    runner = IngestRunner(
        [
            CameraConfig(
                c,
                f"synthetic://?seed={i}&width={width}&height={height}",
                fps=None,
                max_width=None,
                max_frames=per_camera,
            )
            for i, c in enumerate(camera_ids)
        ],
        settings.bootstrap_servers,
        topics.frames,
    )
    started = time.perf_counter()
    runner.start()
    runner.wait()
    sent = sum(w.stats.sent for w in runner.workers)
    ingest_fps = sent / (time.perf_counter() - started)
    runner.stop()
    cpu_ms = ingest_cpu.stop(total)
    progress(f"ingest: {ingest_fps:.1f} fps")
    if sent < total:  # the pipeline can only answer for the frames in Kafka
        errors = "; ".join(sorted({w.stats.last_error for w in runner.workers if w.stats.last_error}))
        progress(f"ingest: {total - sent} of {total} frames never reached Kafka ({errors or 'dropped'})")
    deploy.connect(settings.ray_address)
    progress(f"pipeline ({delivery.value}): deploying; the processor drains the frames topic into results...")
    deploy.deploy(args, app_name=app)
    try:
        processes = _pipeline_processes(settings, app, task)
        pipeline_cpu, pipeline_threads = CpuMeter(processes), ThreadMeter(processes)
        pipeline_threads.start()
        pipeline_cpu.start()
        produced_before, stages_before, sent_before = _stage_snapshot(app, task)
        # The results are read once the processor has produced them all, not while it
        # works: their reader is the pipeline's consumer, not a part of it, and reading
        # as they came took this process ~8 % of a core beside the pipeline on 2 cores.
        _await_produced(app, sent)
        produced_after, stages_after, sent_after = _stage_snapshot(app, task)
        # Per frame the processor produced while measured: it starts on the backlog as soon
        # as the model answers, and Serve may call the app ready only seconds later.
        measured = max(1, produced_after - produced_before)
        cpu_ms.update(pipeline_cpu.stop(measured))
        thread_cpu_ms = pipeline_threads.stop(measured)
        if measured < sent / 2:
            progress(f"pipeline: only {measured} of {sent} results came while measured; use more --frames")
        results, read_up_to = _collect(settings.bootstrap_servers, topics.results, sent)
        by_stage = per_frame_ms(stages_before, stages_after, measured)
        stamps = sorted(r["processed_ts_ms"] for r in results)
        pipeline_fps = (len(stamps) - 1) / max(1e-3, (stamps[-1] - stamps[0]) / 1000) if len(stamps) > 1 else 0.0
        keys = [(r["camera_id"], r["seq"]) for r in results]
        expected = {(c, s) for c in camera_ids for s in range(per_camera)}
        lost = sent - len(expected & set(keys))  # of the frames in Kafka: a result is of one of them
        duplicates = len(keys) - len(set(keys))
        stats = deploy.processor_stats(app)
        forward_cpus = deploy.model_replica_info(app, task)["forward_cpus"]
        boxes = [r["tasks"]["detection"]["detections"] for r in results if "detection" in r.get("tasks", {})]
        per_frame = [(len(b), sum(d.get("track_id") is not None for d in b)) for b in boxes]
        detections_per_frame, tracked_per_frame = (
            np.mean(per_frame, axis=0).round(2).tolist() if per_frame else [None, None]
        )
        raw_batch_ms = 1000 * batch_size / raw_fps
        progress(
            f"pipeline: {pipeline_fps:.1f} fps, lost {lost}; model round trip "
            f"{stats.mean_model_round_trip_ms:.1f} ms per batch (raw: {raw_batch_ms:.1f} ms)"
        )

        rate = latency_fps or max(1.0, pipeline_fps * latency_load)
        latencies: list[float] = []
        sent_fps = 0.0
        breakdown: dict[str, float] = {}
        tail_breakdown: dict[str, float] = {}
        tail_at: list[float] = []
        cores: dict[str, float] = {}
        tail_cores: dict[str, float] = {}
        cores_timeline: list[dict[str, float]] = []
        batch_medians: dict[str, float] = {}
        tail_batch_medians: dict[str, float] = {}
        paced_batches: list[dict[str, float | str]] = []
        latency_cpu_ms: dict[str, float] = {}
        latency_thread_cpu_ms: dict[str, float] = {}
        paced_stages: dict[str, dict[str, float]] = {}
        paced_sent: dict[str, int] = {}
        if latency_seconds > 0:
            n = max(20, int(rate * latency_seconds))
            progress(f"latency: paced stream at {rate:.0f} fps for {latency_seconds:.0f}s...")
            paced = PacedCamera.render("bench-latency", f"synthetic://?seed=7&width={width}&height={height}", n, rate)
            paced_cpu, paced_threads, timeline = CpuMeter(processes), ThreadMeter(processes), CpuTimeline(processes)
            paced_threads.start()
            paced_cpu.start()
            timeline.start()
            paced_produced, paced_before, paced_sent_before = _stage_snapshot(app, task)
            paced.start(settings.bootstrap_servers, topics.frames)
            results_due = n + paced.warmup_results
            # Read once produced, as in the throughput stage: beside the camera's sender,
            # reading as they came would load the cores the latency is measured on.
            try:
                _await_produced(app, paced_produced + results_due, give_up=paced.failed)
                samples = timeline.stop()
                produced, paced_after, paced_sent_after = _stage_snapshot(app, task)
                latency_cpu_ms = paced_cpu.stop(max(1, produced - paced_produced))
                latency_thread_cpu_ms = paced_threads.stop(max(1, produced - paced_produced))
            finally:
                paced.stop()  # after the readings: its threads end with it
            paced_sent = _sent_between(paced_sent_before, paced_sent_after)
            # Read on from the throughput stage's results, not from the topic's start.
            later, _ = _collect(settings.bootstrap_servers, topics.results, results_due, after=read_up_to)
            paced_stages = per_frame_ms(paced_before, paced_after, max(1, produced - paced_produced))
            paced_results = [r for r in later if r["camera_id"] == "bench-latency"]
            latencies = [float(r["processed_ts_ms"] - r["capture_ts_ms"]) for r in paced_results]
            captured = sorted(r["capture_ts_ms"] for r in paced_results)
            if len(captured) > 1:
                sent_fps = (len(captured) - 1) / max(1e-3, (captured[-1] - captured[0]) / 1000)
            breakdown = stage_medians(paced_results)
            tail_breakdown, tail_at = latency_tail(paced_results, latencies)
            cores, tail_cores, cores_timeline = latency_cores(paced_results, latencies, samples)
            if paced_results:
                first_capture = min(r["capture_ts_ms"] for r in paced_results)
                timings = deploy.processor_batch_timings(app, since_ms=first_capture)
                batch_medians, tail_batch_medians, paced_batches = latency_batches(paced_results, latencies, timings)
    finally:
        deploy.delete(app)
        kafka_io.delete_topics(settings.bootstrap_servers, names)
    pct = {f"p{q}": float(np.percentile(latencies, q)) for q in (50, 95, 99)} if latencies else {}
    report = BenchReport(
        task=task.value,
        model=spec.arch,
        frames=total,
        batch_size=batch_size,
        frame_size=f"{width}x{height}",
        raw_fps=round(raw_fps, 2),
        ingest_fps=round(ingest_fps, 2),
        ingest_unsent=total - sent,
        pipeline_fps=round(pipeline_fps, 2),
        ratio=round(pipeline_fps / raw_fps, 3),
        frames_lost=lost,
        duplicates=duplicates,
        mean_batch_size=round(stats.mean_batch_size, 2),
        latency_ms={k: round(v, 1) for k, v in pct.items()},
        latency_rate_fps=round(rate, 1),
        latency_sent_fps=round(sent_fps, 1),
        latency_p99_per_raw_batch=round(pct["p99"] / raw_batch_ms, 2) if pct else 0.0,
        latency_p50_by_stage_ms={k: round(v, 1) for k, v in breakdown.items()},
        latency_tail_by_stage_ms={k: round(v, 1) for k, v in tail_breakdown.items()},
        latency_tail_at_s=tail_at,
        latency_cores=cores,
        latency_tail_cores=tail_cores,
        latency_cores_timeline=cores_timeline,
        latency_batch_medians=batch_medians,
        latency_tail_batch_medians=tail_batch_medians,
        latency_batches=paced_batches,
        tracking=tracking,
        delivery=delivery.value,
        detections_per_frame=detections_per_frame,
        tracked_per_frame=tracked_per_frame,
        cameras=cameras,
        model_input=model_input.value,
        model_hosting=model_hosting.value,
        graph=graph.value,
        fetch_max_wait_ms=fetch_max_wait_ms or ProcessorSettings().fetch_max_wait_ms,
        warmup_s=DeploymentSettings().warmup_s if warmup_s is None else warmup_s,
        max_batch_size=max_batch_size,
        latency_load=round(rate / pipeline_fps, 3) if latency_fps and pipeline_fps else latency_load,
        cpu_ms_per_frame=cpu_ms,
        thread_cpu_ms_per_frame=thread_cpu_ms,
        latency_cpu_ms_per_frame=latency_cpu_ms,
        latency_thread_cpu_ms_per_frame=latency_thread_cpu_ms,
        stage_cpu_ms_per_frame=_column(by_stage, "cpu"),
        stage_wall_ms_per_frame=_column(by_stage, "wall"),
        stage_run_queue_ms_per_frame=_column(by_stage, "run_queue"),
        latency_stage_cpu_ms_per_frame=_column(paced_stages, "cpu"),
        latency_stage_wall_ms_per_frame=_column(paced_stages, "wall"),
        latency_stage_run_queue_ms_per_frame=_column(paced_stages, "run_queue"),
        batches_by_send_rule=_sent_between(sent_before, sent_after),
        latency_batches_by_send_rule=paced_sent,
        processor_peak_rss_mb=round(stats.peak_rss_mb, 1),
        forward_cpus=forward_cpus,
        command=command,
    )
    return report, latencies


@contextlib.contextmanager
def off_model_cpus(placement: CpuPlacement | None) -> Iterator[None]:
    """Every thread of this process off the model's CPUs while inside: the bench's own
    work (ingest, the paced camera, the readers) is plumbing, placed as the stack's
    services are. The raw loop's thread moves onto them for its measurement alone."""
    previous = place_threads(os.getpid(), placement.rest) if placement else {}
    try:
        yield
    finally:
        restore_threads(previous)


def _column(stages: dict[str, dict[str, float]], kind: str) -> dict[str, float]:
    """One kind of :func:`per_frame_ms` figure (cpu, wall, run_queue) by stage."""
    return {stage: ms[kind] for stage, ms in stages.items()}


def stage_medians(results: list[dict[str, Any]]) -> dict[str, float]:
    """Median milliseconds of each stage over ``results``, from their ``timing_ms``
    (queue: capture to dequeue)."""
    stages = sorted({k for r in results for k in r.get("timing_ms", {})})
    return {k: float(np.median([r["timing_ms"][k] for r in results if k in r.get("timing_ms", {})])) for k in stages}


def slowest(results: list[dict[str, Any]], latencies: list[float]) -> list[dict[str, Any]]:
    """The slowest 1 % of ``results``: ``latencies`` (in their order) at or above the p99."""
    if not latencies:
        return []
    p99 = float(np.percentile(latencies, 99))
    return [r for r, ms in zip(results, latencies, strict=True) if ms >= p99]


def latency_tail(results: list[dict[str, Any]], latencies: list[float]) -> tuple[dict[str, float], list[float]]:
    """The :func:`slowest` results' :func:`stage_medians`, and the seconds after the first
    capture at which each was captured (a cluster of them is a stall, a spread tail is load)."""
    tail = slowest(results, latencies)
    if not tail:
        return {}, []
    first = min(r["capture_ts_ms"] for r in results)
    return stage_medians(tail), sorted(round((r["capture_ts_ms"] - first) / 1000, 2) for r in tail)


def latency_cores(
    results: list[dict[str, Any]], latencies: list[float], samples: list[CpuSample]
) -> tuple[dict[str, float], dict[str, float], list[dict[str, float]]]:
    """Mean cores by process, and the host's steal and idle, over the paced stream (its
    first capture to its last result) and over the :func:`slowest` frames' own spans
    (capture to result); and the samples, timed in seconds after the first capture."""
    if not results or not samples:
        return {}, {}, []
    first = min(r["capture_ts_ms"] for r in results)
    last = max(r["processed_ts_ms"] for r in results)
    tail = [(r["capture_ts_ms"], r["processed_ts_ms"]) for r in slowest(results, latencies)]
    timeline = [
        {"t_s": round((s.at_ms - first) / 1000, 2), "seconds": s.seconds, **s.cores}
        for s in samples
        if first < s.at_ms and s.at_ms - 1000 * s.seconds < last
    ]
    return cores_over(samples, [(first, last)]), cores_over(samples, tail), timeline


def latency_batches(
    results: list[dict[str, Any]], latencies: list[float], timings: list[BatchTiming]
) -> tuple[dict[str, float], dict[str, float], list[dict[str, float | str]]]:
    """The paced stream's batches (``timings`` sent from its first capture on): median
    frames, wait (oldest capture to send) and round trip (send to answer) of all of them
    and of those that carried the :func:`slowest` frames (for each such frame, the first
    batch sent at or after its capture whose oldest frame is no younger), and each batch
    timed in seconds after the first capture."""
    if not results or not timings:
        return {}, {}, []
    first = min(r["capture_ts_ms"] for r in results)
    timings = sorted((t for t in timings if t.sent_ms >= first), key=lambda t: t.sent_ms)

    def medians(chosen: list[BatchTiming]) -> dict[str, float]:
        if not chosen:
            return {}
        return {
            "frames": float(np.median([t.frames for t in chosen])),
            "waited_ms": float(np.median([t.sent_ms - t.oldest_capture_ms for t in chosen])),
            "round_trip_ms": float(np.median([t.answered_ms - t.sent_ms for t in chosen])),
        }

    carried: dict[int, BatchTiming] = {}
    for frame in slowest(results, latencies):
        captured = frame["capture_ts_ms"]
        batch = next((t for t in timings if t.sent_ms >= captured and t.oldest_capture_ms <= captured), None)
        if batch is not None:
            carried[batch.sent_ms] = batch
    each: list[dict[str, float | str]] = [
        {
            "t_s": round((t.sent_ms - first) / 1000, 3),
            "frames": t.frames,
            "waited_ms": t.sent_ms - t.oldest_capture_ms,
            "round_trip_ms": t.answered_ms - t.sent_ms,
            "rule": t.rule,
        }
        for t in timings
    ]
    return medians(timings), medians(list(carried.values())), each


class PacedCamera:
    """The latency stage's camera: frames rendered and JPEG-encoded before the stage, then
    sent at ``rate`` frames a second, each stamped with its capture time as it is sent.

    A camera encodes on its own hardware; rendering and encoding here, on the cores the
    pipeline runs on, would charge the camera's work to the pipeline's latency (as the
    throughput stage runs ingest before the pipeline for the same reason).

    A camera's producer is long-lived, too: before the clock starts, one frame of a
    camera of its own (``warmup_camera_id``, one more result on the results topic) is sent
    and acknowledged, so the producer has the topic's metadata and a broker connection. A new
    producer's first send waited for both, about 100 ms, and the frames due meanwhile left
    together: those first frames were a run's slowest 1 % (a one-off dump of a run's
    paced results: queue 70-109 ms against 3-4 a second later)."""

    #: Results of the warm-up frame: one, under this camera id.
    warmup_results = 1

    def __init__(self, frames: list[Frame], rate: float) -> None:
        self.frames = frames
        self.rate = rate
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    @classmethod
    def render(cls, camera_id: str, uri: str, count: int, rate: float) -> PacedCamera:
        from vlm_core.sources import open_source

        source = open_source(uri)
        source.open()
        try:
            frames = []
            for seq in range(count):
                image = source.read()
                if image is None:
                    raise ConfigError(f"{uri} ended after {seq} frames; the latency stage needs {count}")
                frames.append(Frame.from_image(image, camera_id=camera_id, seq=seq, capture_ts_ms=0))
        finally:
            source.close()
        return cls(frames, rate)

    @property
    def warmup_camera_id(self) -> str:
        return f"{self.frames[0].camera_id}-warmup"

    def start(self, bootstrap: str, topic: str, timeout_s: float = 30.0) -> None:
        from services import kafka_io

        producer = kafka_io.producer(bootstrap, linger_ms=0)
        try:
            warmup = replace(self.frames[0], camera_id=self.warmup_camera_id, capture_ts_ms=int(time.time() * 1000))
            kafka_io.send_frame(producer, topic, warmup).get(timeout=timeout_s)
        except BaseException:
            producer.close()
            raise

        def send() -> None:
            name_thread()
            start = time.monotonic()
            try:
                for i, frame in enumerate(self.frames):
                    if self._stop.wait(max(0.0, start + i / self.rate - time.monotonic())):
                        break
                    kafka_io.send_frame(producer, topic, replace(frame, capture_ts_ms=int(time.time() * 1000)))
                producer.flush()
                # Alive (with the producer's network thread) until stopped, so that the
                # bench's CPU-by-thread reading after the stream still finds both.
                self._stop.wait()
            except BaseException as exc:  # reported by stop(), on the bench's thread
                self.error = exc
            finally:
                producer.close()

        self._thread = threading.Thread(target=send, name="paced-camera", daemon=True)
        self._thread.start()

    def failed(self) -> bool:
        """Whether sending stopped on an error (``stop`` raises it)."""
        return self.error is not None

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.error is not None:
            raise self.error


def _await_produced(
    app: str,
    results: int,
    timeout_s: float = 600,
    poll_s: float = 0.25,
    give_up: Callable[[], bool] = lambda: False,
) -> None:
    """Until the app's processor has produced ``results`` results since it started (each
    acknowledged by the broker), ``timeout_s`` passed, ``give_up`` says so, or its count
    went back (a replacement replica counts from 0): the reader after it then waits for
    the rest and counts what is missing."""
    from services.inference import deploy

    stats = deploy.processor_stats_reader(app)
    deadline = time.monotonic() + timeout_s
    produced = 0
    while time.monotonic() < deadline and not give_up():
        now = stats().results_produced
        if now >= results or now < produced:
            return
        produced = now
        time.sleep(poll_s)


#: This process's own stages: its garbage collector's pauses, which hold the paced
#: camera's sends (``bench.gc``, ``bench.gc full``).
_BENCH_PROFILE = StageProfile()


def _stage_snapshot(app: str, task: Task) -> tuple[int, dict[str, StageTotals], dict[str, int]]:
    """Results the processor produced so far; the processor's, the model replica's and
    this process's stage totals (``processor.<stage>``, ``model.<stage>``, ``bench.<stage>``);
    and the batches the processor sent so far by send rule (every rule, 0 or more)."""
    from services.inference import deploy

    stats = deploy.processor_stats(app)
    stages = {f"processor.{name}": totals for name, totals in stats.stages.items()}
    stages.update({f"model.{name}": totals for name, totals in deploy.model_replica_stages(app, task).items()})
    stages.update({f"bench.{name}": totals for name, totals in _BENCH_PROFILE.snapshot().items()})
    sent = {rule.value: int(m.counter_total(stats.counters, m.BATCHES_SENT, rule=rule.value)) for rule in SendRule}
    return stats.results_produced, stages, sent


def _sent_between(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Batches sent by rule between two :func:`_stage_snapshot` counts."""
    return {rule: after[rule] - before[rule] for rule in after}


def _pipeline_processes(settings: LocalSettings, app: str, task: Task) -> dict[str, list[int]]:
    """The processes whose CPU the pipeline stage spends, by role."""
    from services.inference import deploy
    from services.localstack import LocalStack
    from services.localstack.stack import process_tree

    stack = LocalStack(settings)
    processor = deploy.processor_stats(app).pid
    model = deploy.model_replica_pid(app, task)
    head = stack.services["ray"].pid()
    ray = [p for p in process_tree(head) if p not in (processor, model)] if head else []
    # A processor that holds the model is one process: its CPU is one figure.
    pipeline = (
        {"processor": [processor], "model replica": [model]}
        if model != processor
        else {"processor and model": [processor]}
    )
    return {
        "broker": [pid for broker in stack.brokers if (pid := broker.pid()) is not None],
        **pipeline,
        "ray (daemons, Serve controller)": ray,
        "bench (paced camera)": [os.getpid()],
    }


@dataclass
class RepeatedBench:
    """``--repeat N``: the raw loop and the pipeline alternately, N times each."""

    runs: list[BenchReport]
    #: Per figure (nested ones as ``latency_ms.p99``): median, min, max over the runs.
    summary: dict[str, dict[str, float]]
    command: str = ""
    host: Host = field(default_factory=describe_host)
    #: Frames sent through the whole pipeline before the first run, not measured.
    warm_up_frames: int = 0


def summarize(reports: list[BenchReport]) -> dict[str, dict[str, float]]:
    figures: dict[str, list[float]] = {}
    for report in reports:
        for name, value in asdict(report).items():
            if isinstance(value, dict):
                for key, inner in value.items():
                    if isinstance(inner, int | float):
                        figures.setdefault(f"{name}.{key}", []).append(float(inner))
            elif isinstance(value, int | float) and not isinstance(value, bool):
                figures.setdefault(name, []).append(float(value))
    return {name: spread(values) for name, values in figures.items() if len(values) == len(reports)}


def run_repeated(
    repeat: int, *args: Any, warm_up_frames: int = WARM_UP_FRAMES, progress: Any = print, **kwargs: Any
) -> tuple[RepeatedBench, list[float]]:
    """``run_pipeline_bench`` ``repeat`` times, each run measuring the raw loop again right
    before its pipeline, so the two alternate under the same conditions.

    First, ``warm_up_frames`` go through the whole pipeline unmeasured. A broker started
    minutes ago is a JVM still compiling its hot paths: in a run on a fresh stack here it
    spent 0.62-0.75 CPU ms a frame, against 0.16-0.19 once it had carried some 30,000
    frames, on the same 2 cores as the model (docs/performance-notes.md, "A fresh broker"). A deployment
    runs for weeks; the bench measures that state, not the first minute."""
    if repeat < 1:
        raise ConfigError(f"--repeat {repeat}: give at least 1 (3 or more for a median with a spread)")
    if warm_up_frames and warm_up_frames < MIN_FRAMES:
        raise ConfigError(f"--warm-up-frames {warm_up_frames}: give 0 (none) or at least {MIN_FRAMES}")
    settings: LocalSettings | None = kwargs.get("settings")
    placement = settings.placement() if settings else None
    with off_model_cpus(placement):
        if warm_up_frames:
            task, arch, *_ = args
            progress(f"warm-up: {warm_up_frames} frames through the whole pipeline, not measured")
            run_pipeline_bench(
                task,
                arch,
                warm_up_frames,
                **{**kwargs, "latency_seconds": 0.0, "raw_fps": _NOT_MEASURED},
                progress=lambda _message: None,
            )
        reports: list[BenchReport] = []
        latencies: list[float] = []
        for run in range(repeat):
            progress(f"run {run + 1}/{repeat}")
            report, run_latencies = run_pipeline_bench(*args, progress=progress, **kwargs)
            reports.append(report)
            latencies.extend(run_latencies)
            progress(
                f"run {run + 1}/{repeat}: raw {report.raw_fps:.1f} fps, pipeline {report.pipeline_fps:.1f} fps, "
                f"ratio {report.ratio:.2f}, p99 {report.latency_ms.get('p99', float('nan')):.0f} ms"
            )
    bench = RepeatedBench(reports, summarize(reports), kwargs.get("command", ""), warm_up_frames=warm_up_frames)
    return bench, latencies


def _collect(
    bootstrap: str,
    topic: str,
    expected: int,
    timeout_s: float = 600,
    give_up: Callable[[], bool] = lambda: False,
    after: dict[int, int] | None = None,
) -> tuple[list[dict[str, Any]], dict[int, int]]:
    """``expected`` results (from ``after``'s offsets, else the topic's start), and each
    partition's offset after them."""
    from services.kafka_io import next_offsets, read_records

    records = read_records(bootstrap, topic, expected, timeout_s=timeout_s, give_up=give_up, after=after)
    return [json.loads(r.value) for r in records], {**(after or {}), **next_offsets(records)}


def write_outputs(bench: RepeatedBench, latencies: list[float], json_path: Path | None) -> Path | None:
    """The runs and their summary as JSON, and the pooled latency histogram beside it."""
    if json_path is None:
        return None
    json_path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "command": bench.command,
        "repeat": len(bench.runs),
        "host": bench.host.to_json(),
        "warm_up_frames": bench.warm_up_frames,
        "summary": bench.summary,
    }
    json_path.write_text(json.dumps({**document, "runs": [asdict(r) for r in bench.runs]}, indent=2) + "\n")
    png = json_path.with_suffix(".png")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    report = bench.runs[0]
    # The run with the slowest p99 beside the histogram: what each process used while it ran.
    worst = max(bench.runs, key=lambda r: r.latency_ms.get("p99", 0.0))
    if worst.latency_cores_timeline:
        fig, (ax, over_time) = plt.subplots(2, 1, figsize=(7, 6.5))
        _plot_cores(over_time, worst)
    else:
        fig, ax = plt.subplots(figsize=(6, 3.5))
    if latencies:
        ax.hist(latencies, bins=40, color="#3b7dd8")
        for name in ("p50", "p95", "p99"):
            value = float(np.percentile(latencies, int(name[1:])))
            ax.axvline(value, color="k", linestyle="--", linewidth=0.8)
            ax.text(value, ax.get_ylim()[1] * 0.9, name, rotation=90, fontsize=8)
    ax.set_xlabel("end-to-end latency (ms), capture to result produced")
    ax.set_ylabel("frames")
    ax.set_title(f"{report.task} / {report.model}, {report.frame_size}, {len(bench.runs)} runs pooled")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


def _plot_cores(ax: Any, report: BenchReport) -> None:
    """Cores by process over a run's paced stream, stacked, with the host's idle cores on
    top, the slowest 1 % of its frames marked where they were captured, and each batch's
    round trip."""
    rows = report.latency_cores_timeline
    at = [row["t_s"] for row in rows]
    names = [name for name in report.latency_cores if name not in (HOST_IDLE, HOST_STEAL)]
    names += [name for name in (HOST_STEAL, HOST_IDLE) if name in report.latency_cores]
    ax.stackplot(at, *([row.get(name, 0.0) for row in rows] for name in names), labels=names, step="pre")
    for captured in report.latency_tail_at_s:
        ax.axvline(captured, color="k", linewidth=0.5, alpha=0.6)
    ax.set_xlabel("seconds into the paced stream (black: the slowest 1 % of frames, at capture)")
    ax.set_ylabel("cores")
    if report.latency_batches:
        round_trips = ax.twinx()
        round_trips.plot(
            [b["t_s"] for b in report.latency_batches],
            [b["round_trip_ms"] for b in report.latency_batches],
            "k.",
            markersize=3,
        )
        round_trips.set_ylabel("batch round trip, ms (dots)")
    ax.set_title(f"run with the slowest p99 ({report.latency_ms.get('p99', 0.0):.0f} ms): cores by process", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", ncol=3)
