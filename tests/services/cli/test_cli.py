"""User mistakes get one line naming the problem and the fix, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def vlm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["ingest"], "give --source and --camera-id"),
        (["ingest", "--source", "ftp://x/y", "--camera-id", "c"], "unsupported source scheme"),
        (["ingest", "--sources", "/no/such/sources.yaml"], "does not exist"),
        (["local", "up", "zookeeper"], "unknown service"),
        (["train", "--task", "counting", "--data", "fashion-mnist"], "unknown task 'counting'"),
        (["train", "--task", "classification", "--data", "/no/such/dir"], "cannot read training data"),
        (["train", "--task", "detection", "--data", "fashion-mnist"], "fashion-mnist is a classification dataset"),
        (["train", "--task", "detection", "--data", "scenes://", "--arch", "resnet18"], "not a detection architecture"),
        (["eval", "--model", "no-such-model@3", "--data", "fashion-mnist"], "no-such-model"),
        (["label", "push", "/no/such/dir", "--dataset", "d", "--task", "classification"], "cannot read training data"),
        (["label", "push", "fashion-mnist", "--dataset", "a b", "--task", "classification"], "dataset name 'a b'"),
        (["label", "push", "scenes://?n=5", "--dataset", "d", "--task", "classification"], "scenes:// trains"),
        (["train", "--task", "classification", "--data", "labels://"], "bad labels URI"),
        (["ingest", "--source", "/etc/passwd", "--camera-id", "c", "--max-frames", "3"], "cannot read /etc/passwd"),
        (["ingest", "--source", "synthetic://?seed=abc", "--camera-id", "c", "--max-frames", "3"], "not an integer"),
        (["ingest", "--source", "synthetic://", "--camera-id", "c", "--fps", "-5"], "--fps -5 is negative"),
        (["ingest", "--source", "synthetic://", "--camera-id", "bad\tid"], "camera id"),
        (["ingest", "--source", "synthetic://?exits=2", "--camera-id", "c", "--max-frames", "3"], "must be 0 or 1"),
        (["events", "--type", "teleported"], "unknown event type teleported"),
        (["bench", "tracking", "--model", "no-such-detector"], "no production 'no-such-detector'"),
        (["bench", "pipeline", "--task", "classification", "--tracking"], "--tracking needs --task detection"),
        (["bench", "pipeline", "--task", "classification", "--model", "no-such-model@9"], "no-such-model@9 does not"),
        (["bench", "pipeline", "--task", "classification", "--latency-fps", "0"], "--latency-fps 0: give a rate"),
        (["bench", "pipeline", "--task", "classification", "--warm-up-frames", "10"], "--warm-up-frames 10: give 0"),
        (["bench", "pipeline", "--task", "classification", "--model-cpus", "4096"], "model CPUs 4096: this machine"),
        (["local", "up", "--model-cpus", "1-"], "'1-' is not a CPU list"),
        (["bench", "pipeline", "--task", "classification", "--model-hosting", "actor"], "'actor' is not offered"),
        (["serve", "--app", "nope"], "has no application named 'nope'"),
        (["chaos", "--fault", "meteor"], "'meteor' is not a valid Fault"),
        (
            ["optimize", "--model", "m@1", "--method", "int8", "--calibration", "fashion-mnist", "--student", "x"],
            "--student goes with --method distill",
        ),
        (["optimize", "--model", "m@1", "--method", "distill", "--calibration", "fashion-mnist"], "distill needs one"),
        (["optimize", "--model", "m@1", "--method", "int4", "--calibration", "fashion-mnist"], "'int4' is not offered"),
        (["train", "--task", "classification", "--data", "fashion-mnist", "--teacher", "no-such-teacher@2"], "no-such"),
        (["chaos", "--fault", "broker_kill"], "broker_kill needs a 3-broker cluster"),
    ],
)
def test_user_errors_are_one_line(args: list[str], expected: str) -> None:
    proc = vlm(*args)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error:") and expected in lines[0]


def test_unknown_option_is_reported_by_the_parser() -> None:
    proc = vlm("ingest", "--frobnicate")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "frobnicate" in proc.stderr


def test_models_archs_lists_the_zoo() -> None:
    proc = vlm("models", "archs")
    assert proc.returncode == 0
    assert "ssdlite320_mobilenet_v3_large" in proc.stdout and "lraspp_mobilenet_v3_large" in proc.stdout


def test_serve_with_ray_down_says_so_in_one_line_within_seconds() -> None:
    import socket
    import time

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    start = time.monotonic()
    proc = vlm("serve", "--ray-address", f"127.0.0.1:{port}")
    elapsed = time.monotonic() - start
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Ray is not running" in lines[0] and "vlm local up" in lines[0], proc.stderr
    assert elapsed < 15, f"took {elapsed:.1f}s"


def test_fps_zero_is_documented() -> None:
    proc = vlm("ingest", "--help")
    assert "0 sends every frame" in " ".join(proc.stdout.split())


def test_a_busy_metrics_port_is_one_line() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        port = sock.getsockname()[1]
        proc = vlm("ingest", "--source", "synthetic://", "--camera-id", "c", "--metrics-port", str(port))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and f"cannot serve ingest metrics on 127.0.0.1:{port}" in lines[0], proc.stderr


def test_the_pipeline_bench_prints_the_paced_streams_figures_over_it_and_over_its_slowest_frames(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from typer.testing import CliRunner

    from services import bench
    from services.cli.app import app

    report = bench.BenchReport(
        "classification",
        "m",
        1000,
        16,
        "320x240",
        300.0,
        500.0,
        270.0,
        0.9,
        0,
        0,
        16.0,
        latency_cores={"processor": 0.94, "host idle": 0.48},
        latency_tail_cores={"processor": 1.07, "host idle": 0.21},
        latency_batch_medians={"frames": 9.0, "round_trip_ms": 42.0},
        latency_tail_batch_medians={"frames": 16.0, "round_trip_ms": 104.5},
        latency_thread_cpu_ms_per_frame={"broker / C2 CompilerThre": 0.41, "broker / other threads": 0.2},
        thread_cpu_ms_per_frame={"processor and model / infer_0": 2.34},
    )
    repeated = bench.RepeatedBench([report], bench.summarize([report]), "vlm bench pipeline")
    monkeypatch.setattr(bench, "run_repeated", lambda *_args, **_kwargs: (repeated, [10.0, 20.0]))
    result = CliRunner().invoke(app, ["bench", "pipeline", "--task", "classification"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "cores by process," in result.output and "batches," in result.output
    assert "[min-max]" in result.output  # not taken for markup
    rows = {line.split("│")[1].strip(): line for line in result.output.splitlines() if line.count("│") == 4}
    assert "0.9 [0.9-0.9]" in rows["processor"] and "1.1 [1.1-1.1]" in rows["processor"]
    assert "42.0 [42.0-42.0]" in rows["round_trip_ms"] and "104 [104-104]" in rows["round_trip_ms"]
    threads = {line.split("│")[1].strip(): line for line in result.output.splitlines() if line.count("│") == 3}
    assert "CPU ms per paced frame by thread" in result.output
    assert "0.4 [0.4-0.4]" in threads["broker / C2 CompilerThre"] and "0.2" in threads["broker / other threads"]
    assert "CPU ms per frame by thread, the busiest" in result.output
    assert "2.3 [2.3-2.3]" in threads["processor and model / infer_0"]
