import json
from pathlib import Path

import pytest


def test_soak_finds_a_reused_id_and_accepts_a_track_that_resumes() -> None:
    from services.bench_soak import reused_ids
    from vlm_core.contracts.result import Detection, Detections, ModelRef, Result
    from vlm_core.contracts.task import Task

    def result(ts: int, *ids: int) -> Result:
        dets = tuple(Detection((0, 0, 1, 1), "x", 0, 0.9, track_id=i) for i in ids)
        return Result("c", ts, ts, ts, 4, 4, outputs={Task.DETECTION: Detections(ModelRef("d", "1"), dets)})

    resumed = [result(0, 1), result(2_000, 1), result(2_100, 1, 2)]
    assert reused_ids(resumed, max_lost_s=3.0) == (2, 0)
    assert reused_ids([*resumed, result(60_000, 1)], max_lost_s=3.0) == (2, 1)


def test_tracking_scores_perfect_tracks_fully_and_count_a_switch() -> None:
    from services.bench_tracking import SequenceTruth, score_sequence
    from vlm_core.contracts.dlq import FrameRef
    from vlm_core.contracts.event import Event, EventType
    from vlm_core.contracts.result import Detection, Detections, ModelRef, Result
    from vlm_core.contracts.task import Task
    from vlm_core.datasets.scenes import TruthItem

    frames = [
        (TruthItem(1, 0, (10.0 + t, 10, 40 + t, 40), 1.0), TruthItem(2, 3, (100.0, 50, 130, 80), 0.1))
        for t in range(10)
    ]
    truth = SequenceTruth("c", frames, line_in=1, line_out=0, zone_entries=0)

    def results(ids: list[int]) -> list[Result]:
        out = []
        for t, tid in enumerate(ids):
            dets = (
                Detection(frames[t][0].box, "a", 0, 0.9, track_id=tid),
                Detection(frames[t][1].box, "b", 3, 0.9, track_id=50),  # on a hidden item: don't care
            )
            out.append(Result("c", t, t, t, 200, 100, outputs={Task.DETECTION: Detections(ModelRef("d", "1"), dets)}))
        return out

    crossing = Event(EventType.LINE_CROSSED, "c", 3, 3, FrameRef("f", 0, 3), track_id=7, line="l", direction="in")
    perfect = score_sequence(truth, results([7] * 10), [crossing, crossing], min_visibility=0.3)
    assert (perfect.mota, perfect.idf1, perfect.id_switches, perfect.false_positives) == (1.0, 1.0, 0, 0)
    assert perfect.line_error == 0 and perfect.line_counted == {"in": 1, "out": 0}  # a repeated event counts once
    switched = score_sequence(truth, results([7] * 5 + [8] * 5), [], min_visibility=0.3)
    assert switched.id_switches == 1 and switched.idf1 < 1 and switched.line_error == 1


def test_tracker_overrides_are_checked_like_a_pipeline_config() -> None:
    import pytest

    from services.bench_tracking import BENCH_TRACKING, tracking_overrides
    from vlm_core.errors import ConfigError

    assert tracking_overrides([]) == BENCH_TRACKING
    assert tracking_overrides(["high_score=0.5", "min_hits=2"]) == {**BENCH_TRACKING, "high_score": 0.5, "min_hits": 2}
    with pytest.raises(ConfigError, match="not KEY=VALUE"):
        tracking_overrides(["high_score"])
    with pytest.raises(ConfigError, match="--tracker high_score"):
        tracking_overrides(["high_score=2"])
    with pytest.raises(ConfigError, match="--tracker colour"):
        tracking_overrides(["colour=red"])


def test_the_transport_bench_times_both_ways_on_real_payloads(tmp_path: Path) -> None:
    import json as json_module
    import struct

    import cv2
    import numpy as np

    from services.bench_transport import _frames, mjpeg_part, run_transport_bench, websocket_message

    frame, result = _frames(1, 160, 120)[0]
    message = websocket_message(frame, result)
    (length,) = struct.unpack(">I", message[:4])
    header = json_module.loads(message[4 : 4 + length])
    assert header["seq"] == 0 and message[4 + length :] == frame.data  # the camera's own JPEG, untouched
    assert header["result"]["tasks"]["detection"]["detections"]
    part = mjpeg_part(frame, result)
    drawn = cv2.imdecode(np.frombuffer(part[part.index(b"\r\n\r\n") + 4 :], np.uint8), cv2.IMREAD_COLOR)
    original = cv2.imdecode(np.frombuffer(frame.data, np.uint8), cv2.IMREAD_COLOR)
    assert drawn.shape == original.shape and np.abs(drawn.astype(int) - original).max() > 100  # boxes drawn
    report = run_transport_bench(frames=10, width=160, height=120, runs=2)
    assert len(report.runs) == 2 and set(report.summary) == {"websocket", "mjpeg", "mjpeg_over_websocket_cpu"}
    assert all(report.summary[t]["bytes_per_frame"] > 1000 for t in ("websocket", "mjpeg"))
    from services.bench_transport import write_report

    write_report(report, tmp_path / "transport.json")
    assert json.loads((tmp_path / "transport.json").read_text())["host"]["cpus"] >= 1  # the machine it ran on


def test_repeated_runs_summarise_every_figure_as_median_and_spread() -> None:
    from services.bench import BenchReport, summarize

    def report(raw: float, pipe: float, p99: float, processor_ms: float) -> BenchReport:
        return BenchReport(
            "classification", "m", 1000, 16, "320x240", raw, 500.0, pipe, round(pipe / raw, 3), 0, 0, 16.0,
            latency_ms={"p50": 40.0, "p99": p99}, cpu_ms_per_frame={"processor": processor_ms},
        )  # fmt: skip

    summary = summarize([report(300, 270, 90, 1.0), report(320, 300, 120, 3.0), report(310, 250, 100, 2.0)])
    assert summary["raw_fps"] == {"median": 310.0, "min": 300.0, "max": 320.0}
    assert summary["latency_ms.p99"] == {"median": 100.0, "min": 90.0, "max": 120.0}
    assert summary["cpu_ms_per_frame.processor"]["median"] == 2.0
    assert summary["ratio"]["min"] == round(250 / 310, 3)
    assert "tracking" not in summary and "task" not in summary  # flags and names are not figures


def test_the_bench_json_names_the_host_it_ran_on(tmp_path: Path) -> None:
    from services.bench import BenchReport, RepeatedBench, summarize, write_outputs
    from vlm_core.cpu import KERNEL_FLAGS

    run = BenchReport("classification", "m", 1000, 16, "320x240", 300.0, 500.0, 270.0, 0.9, 0, 0, 16.0)
    write_outputs(RepeatedBench([run], summarize([run]), "vlm bench pipeline"), [10.0, 20.0], tmp_path / "b.json")
    host = json.loads((tmp_path / "b.json").read_text())["host"]
    assert host["cpus"] >= 1 and host["cpu"] and set(host["flags"]) <= set(KERNEL_FLAGS)


def test_a_report_with_a_cpu_timeline_draws_it_under_the_histogram(tmp_path: Path) -> None:
    from dataclasses import replace

    import matplotlib.image

    from services.bench import BenchReport, RepeatedBench, summarize, write_outputs
    from vlm_core.cpu import HOST_IDLE

    plain = BenchReport("classification", "m", 1000, 16, "320x240", 300.0, 500.0, 270.0, 0.9, 0, 0, 16.0)
    timeline = [{"t_s": 0.1 * i, "seconds": 0.1, "processor": 0.9, HOST_IDLE: 0.6} for i in range(1, 50)]
    timed = replace(
        plain,
        latency_ms={"p99": 200.0},
        latency_cores={"processor": 0.9, HOST_IDLE: 0.6},
        latency_tail_at_s=[2.0, 2.01],
        latency_cores_timeline=timeline,
        latency_batches=[{"t_s": 1.0, "frames": 5, "waited_ms": 12, "round_trip_ms": 31, "rule": "answered"}],
    )
    heights = []
    for runs in ([plain], [plain, timed]):
        png = write_outputs(RepeatedBench(runs, summarize(runs)), [10.0, 20.0], tmp_path / f"{len(runs)}.json")
        assert png is not None
        heights.append(matplotlib.image.imread(png).shape[0])
    assert heights[1] > 1.5 * heights[0]  # a second panel
    document = json.loads((tmp_path / "2.json").read_text())
    assert document["runs"][1]["latency_cores_timeline"] == timeline


def test_frame_sizes_are_the_camera_resolutions_offered() -> None:
    import pytest

    from services.bench import parse_frame_size
    from vlm_core.errors import ConfigError

    assert parse_frame_size("1280x720") == (1280, 720)
    with pytest.raises(ConfigError, match="is not offered") as failure:
        parse_frame_size("640x480")
    assert failure.value.hint == "choose one of 320x240, 1280x720, 1920x1080"


def test_the_raw_loop_and_the_replica_bench_the_same_weights() -> None:
    import torch
    from safetensors.torch import load_file

    from services.bench import bench_spec
    from vlm_core.contracts.task import Task
    from vlm_core.models import build_model

    first, second = bench_spec(Task.SEGMENTATION, None), bench_spec(Task.SEGMENTATION, None)
    assert first.weights and first.weights == second.weights
    model, _ = build_model(first)  # what each side builds from the spec it is given
    stored = load_file(first.weights)
    assert all(torch.equal(stored[k], v) for k, v in model.state_dict().items())


def test_model_calls_cannot_be_smaller_than_a_request() -> None:
    import pytest

    from services.bench import run_pipeline_bench
    from vlm_core.config import LocalSettings
    from vlm_core.contracts.task import Task
    from vlm_core.errors import ConfigError

    with pytest.raises(ConfigError, match="--max-batch-size 4 is below the batch size 8"):
        run_pipeline_bench(Task.DETECTION, None, 100, batch_size=8, max_batch_size=4, settings=LocalSettings())


def test_the_latency_tail_is_the_slowest_frames_stages_and_when_they_were_captured() -> None:
    from services.bench import latency_tail, stage_medians

    def result(at_ms: int, queue: float, model: float) -> dict[str, object]:
        return {"capture_ts_ms": 1_000 + at_ms, "timing_ms": {"queue": queue, "classification": model}}

    steady = [result(10 * i, 3.0, 60.0) for i in range(198)]
    stalled = [result(5_000, 200.0, 61.0), result(5_010, 190.0, 62.0)]
    results = steady + stalled
    latencies = [sum(r["timing_ms"].values()) for r in results]  # type: ignore[attr-defined]
    stages, at_s = latency_tail(results, latencies)
    assert stages == stage_medians(stalled) == {"classification": 61.5, "queue": 195.0}
    assert at_s == [5.0, 5.01]
    assert latency_tail([], []) == ({}, [])


def test_the_cores_while_the_slowest_frames_waited_come_from_the_samples_over_their_spans() -> None:
    from services.bench import latency_cores
    from vlm_core.cpu import HOST_STEAL, CpuSample

    def result(at_ms: int, latency_ms: int) -> dict[str, object]:
        return {"capture_ts_ms": 10_000 + at_ms, "processed_ts_ms": 10_000 + at_ms + latency_ms}

    results = [result(10 * i, 50) for i in range(198)] + [result(1_000, 300), result(1_010, 290)]
    latencies = [float(r["processed_ts_ms"] - r["capture_ts_ms"]) for r in results]  # type: ignore[operator]
    # Every 0.1 s, the broker busy around the two slow frames and nothing stolen.
    samples = [
        CpuSample(10_000 + t, 0.1, {"broker": 1.0 if 1_200 <= t <= 1_400 else 0.1, HOST_STEAL: 0.0})
        for t in range(100, 2_200, 100)
    ]
    stream, tail, timeline = latency_cores(results, latencies, samples)
    # Their spans (11.0-11.3 s) cover the samples ending at 11.1, 11.2 and 11.3 s: two busy.
    assert tail == {"broker": pytest.approx(0.7), HOST_STEAL: 0.0}
    assert stream["broker"] == pytest.approx((3 * 1.0 + 18 * 0.1) / 21, abs=1e-3)
    assert [row["t_s"] for row in timeline] == [round(0.1 * i, 2) for i in range(1, 22)]
    assert latency_cores([], [], samples) == ({}, {}, [])


def test_the_batches_that_carried_the_slowest_frames_are_found_by_capture_and_send_time() -> None:
    from services.bench import latency_batches
    from vlm_core.stream import BatchTiming

    def result(at_ms: int, latency_ms: int) -> dict[str, object]:
        return {"capture_ts_ms": 10_000 + at_ms, "processed_ts_ms": 10_000 + at_ms + latency_ms}

    results = [result(10 * i, 40) for i in range(198)] + [result(1_000, 250), result(1_005, 240)]
    latencies = [float(r["processed_ts_ms"] - r["capture_ts_ms"]) for r in results]  # type: ignore[operator]
    # A batch every 50 ms of the frames since the last, answered 30 ms after; the slow two
    # (captured at 11.000 and 11.005 s) went in one batch of 12 sent at 11.190 s.
    timings = [BatchTiming(10_000 + t, 10_000 + t + 30, 5, 10_000 + t - 45, "answered") for t in range(50, 2_000, 50)]
    timings.append(BatchTiming(9_990, 10_020, 3, 9_950, "answered"))  # before the stream: left out
    timings = [t for t in timings if not 950 < t.sent_ms - 10_000 < 1_200]
    timings.append(BatchTiming(11_190, 11_240, 12, 11_000, "full"))
    every, carried, each = latency_batches(results, latencies, timings)
    assert carried == {"frames": 12.0, "waited_ms": 190.0, "round_trip_ms": 50.0}
    assert every == {"frames": 5.0, "waited_ms": 45.0, "round_trip_ms": 30.0}
    assert each[0] == {"t_s": 0.05, "frames": 5, "waited_ms": 45, "round_trip_ms": 30, "rule": "answered"}
    assert len(each) == len(timings) - 1 and [b["t_s"] for b in each] == sorted(b["t_s"] for b in each)
    assert latency_batches(results, latencies, []) == ({}, {}, [])


def test_a_warm_up_pass_runs_unmeasured_before_the_repeated_runs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from services import bench
    from vlm_core.contracts.task import Task
    from vlm_core.errors import ConfigError

    calls: list[tuple[int, object, object]] = []

    def run(task: Task, arch: str | None, frames: int, **kwargs: object) -> tuple[bench.BenchReport, list[float]]:
        calls.append((frames, kwargs.get("latency_seconds"), kwargs.get("raw_fps")))
        report = bench.BenchReport("classification", "m", frames, 16, "320x240", 300.0, 500.0, 270.0, 0.9, 0, 0, 16.0)
        return report, [float(len(calls))]

    monkeypatch.setattr(bench, "run_pipeline_bench", run)
    repeated, latencies = bench.run_repeated(
        2, Task.CLASSIFICATION, None, 1000, warm_up_frames=500, latency_seconds=10.0, progress=lambda _m: None
    )
    # The warm-up: its own frame count, no latency stage, no raw loop; its report is dropped.
    assert calls == [(500, 0.0, bench._NOT_MEASURED), (1000, 10.0, None), (1000, 10.0, None)]
    assert [r.frames for r in repeated.runs] == [1000, 1000] and latencies == [2.0, 3.0]
    bench.write_outputs(repeated, latencies, tmp_path / "b.json")
    assert json.loads((tmp_path / "b.json").read_text())["warm_up_frames"] == 500

    calls.clear()
    bench.run_repeated(1, Task.CLASSIFICATION, None, 1000, warm_up_frames=0, progress=lambda _m: None)
    assert calls == [(1000, None, None)]
    for few in (-1, 10):
        with pytest.raises(ConfigError, match=f"--warm-up-frames {few}: give 0 \\(none\\) or at least 50"):
            bench.run_repeated(1, Task.CLASSIFICATION, None, 1000, warm_up_frames=few)


@pytest.mark.integration
def test_the_paced_camera_sends_at_its_rate_and_its_threads_live_until_stopped(
    kafka_bootstrap: str, topic_name: str
) -> None:
    import os
    import time

    from services import kafka_io
    from services.bench import PacedCamera
    from vlm_core.contracts.frame import Frame
    from vlm_core.cpu import ThreadMeter

    kafka_io.ensure_topics(kafka_bootstrap, [kafka_io.TopicSpec(topic_name, 1)])
    camera = PacedCamera.render("paced", "synthetic://?seed=7&width=320&height=240", 40, rate=20.0)
    meter = ThreadMeter({"bench": [os.getpid()]}, top=10_000)
    meter.start()
    camera.start(kafka_bootstrap, topic_name)
    records = kafka_io.read_records(kafka_bootstrap, topic_name, 41, timeout_s=60)
    time.sleep(0.5)  # every frame is sent: the camera's threads wait for stop()
    threads = meter.stop(frames=40)
    camera.stop()
    frames = [Frame.from_kafka(r.key, r.value, r.headers) for r in records]
    assert [f.seq for f in frames if f.camera_id == "paced"] == list(range(40))
    assert [f.camera_id for f in frames].count(camera.warmup_camera_id) == PacedCamera.warmup_results
    stamps = [f.capture_ts_ms for f in frames if f.camera_id == "paced"]
    assert 1500 <= stamps[-1] - stamps[0] <= 4000, "39 gaps of 50 ms, not all at once"
    assert threads.get("bench / paced-camera", 0.0) > 0.0, threads  # alive at the second reading
