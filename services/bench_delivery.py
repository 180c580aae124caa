"""``vlm bench delivery``: what exactly once costs against at least once.

Each run deploys the same pipeline twice on fresh topics, at least once then exactly once
(the order alternates between runs, so a machine that slows down over the session does not
favour one mode), and measures both as ``vlm bench pipeline`` does: throughput between the
first and the last result of a backlog, and end-to-end latency of a paced stream. The raw
model is measured once. Reported: per mode the median, minimum and maximum of every
figure, and the exactly-once / at-least-once ratio of each run's pair.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from services.bench import (
    BenchReport,
    bench_spec,
    measure_raw,
    off_model_cpus,
    run_pipeline_bench,
    spread,
    synthetic_frames,
)
from vlm_core.config import LocalSettings
from vlm_core.contracts.task import Task
from vlm_core.errors import ConfigError
from vlm_core.pipeline import Delivery
from vlm_core.tasks import get_profile

#: Figures of a run compared between the modes (higher is better for fps, lower for ms).
FIGURES = ("pipeline_fps", "p50_ms", "p99_ms")


@dataclass
class DeliveryReport:
    task: str
    model: str
    frames: int
    runs: int
    raw_fps: float
    #: Per mode, every run's report (``BenchReport`` as a dict).
    reports: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    #: Per mode and figure: median, min, max over the runs.
    summary: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    #: Per figure, exactly once / at least once of each run's pair: median, min, max.
    exactly_once_ratio: dict[str, dict[str, float]] = field(default_factory=dict)
    lost: dict[str, int] = field(default_factory=dict)
    duplicates: dict[str, int] = field(default_factory=dict)
    command: str = ""


def _figures(report: BenchReport) -> dict[str, float]:
    return {
        "pipeline_fps": report.pipeline_fps,
        "p50_ms": report.latency_ms.get("p50", float("nan")),
        "p99_ms": report.latency_ms.get("p99", float("nan")),
    }


def run_delivery_bench(
    task: Task,
    arch: str | None,
    frames: int,
    *,
    runs: int = 3,
    latency_seconds: float = 10.0,
    settings: LocalSettings,
    progress: Callable[[str], None] = print,
    command: str = "",
) -> DeliveryReport:
    if runs < 1:
        raise ConfigError(f"--runs {runs}: give at least 1 (3 or more for a median with a spread)")
    spec = bench_spec(task, arch)
    batch_size = get_profile(task).defaults.bench_batch_size
    images = synthetic_frames(min(frames, 400), 320, 240)
    placement = settings.placement()
    raw_fps = measure_raw(
        spec, (images * (frames // len(images) + 1))[:frames], batch_size, cpus=placement.model if placement else None
    )
    progress(f"raw {spec.arch}: {raw_fps:.1f} fps (batch {batch_size}, 1 torch thread)")
    modes = [Delivery.AT_LEAST_ONCE, Delivery.EXACTLY_ONCE]
    reports: dict[str, list[BenchReport]] = {mode.value: [] for mode in modes}
    with off_model_cpus(placement):
        for run in range(runs):
            for mode in modes if run % 2 == 0 else modes[::-1]:
                progress(f"run {run + 1}/{runs}: {mode.value}")
                report, _latencies = run_pipeline_bench(
                    task,
                    arch,
                    frames,
                    latency_seconds=latency_seconds,
                    delivery=mode,
                    raw_fps=raw_fps,
                    settings=settings,
                    progress=progress,
                    command=command,
                )
                reports[mode.value].append(report)
                progress(
                    f"  {mode.value}: {report.pipeline_fps:.1f} fps, p50 {report.latency_ms.get('p50', 0):.0f} ms, "
                    f"p99 {report.latency_ms.get('p99', 0):.0f} ms, lost {report.frames_lost}, dups {report.duplicates}"
                )
    figures = {mode: [_figures(r) for r in rs] for mode, rs in reports.items()}
    summary = {mode: {f: spread([run[f] for run in runs_]) for f in FIGURES} for mode, runs_ in figures.items()}
    alo, eo = figures[Delivery.AT_LEAST_ONCE.value], figures[Delivery.EXACTLY_ONCE.value]
    ratio = {f: spread([e[f] / a[f] for a, e in zip(alo, eo, strict=True) if a[f]]) for f in FIGURES}
    return DeliveryReport(
        task=task.value,
        model=spec.arch,
        frames=frames,
        runs=runs,
        raw_fps=round(raw_fps, 2),
        reports={mode: [asdict(r) for r in rs] for mode, rs in reports.items()},
        summary=summary,
        exactly_once_ratio=ratio,
        lost={mode: sum(r.frames_lost for r in rs) for mode, rs in reports.items()},
        duplicates={mode: sum(r.duplicates for r in rs) for mode, rs in reports.items()},
        command=command,
    )


def write_report(report: DeliveryReport, path: Path | None) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(report), indent=2) + "\n")
