"""`vlm local up|status|down` on its own ports and state dir, as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from services.localstack.stack import pid_alive, process_group_members, process_tree
from vlm_core.config import LocalSettings
from vlm_core.cpu import MODEL_CPUS_ENV, machine_cpus

pytestmark = pytest.mark.integration


def vlm(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args], env=env, capture_output=True, text=True, timeout=240
    )


def test_up_status_down(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "VLM_STATE_DIR": str(tmp_path / "state"),
        "VLM_KAFKA_PORT": "49092",
        "VLM_KAFKA_CONTROLLER_PORT": "49093",
        "VLM_RAY_PORT": "46379",
        "VLM_RAY_METRICS_PORT": "48080",
        "VLM_PROMETHEUS_PORT": "49090",
        "COLUMNS": "200",
    }
    settings = LocalSettings.from_env(env)
    # With two CPUs or more, the stack keeps one for the model's forward passes.
    everywhere = machine_cpus()
    model = max(everywhere) if len(everywhere) > 1 else None
    placement = ["--model-cpus", str(model)] if model is not None else []
    try:
        up = vlm(["local", "up", "kafka", "ray", *placement], env)
        assert up.returncode == 0, up.stdout + up.stderr
        status = vlm(["local", "status"], env)
        assert status.returncode == 0
        lines = {line.split("│")[1].strip(): line for line in status.stdout.splitlines() if line.count("│") > 3}
        assert "running" in lines["kafka"] and "49092" in lines["kafka"]
        assert "running" in lines["ray"] and "46379" in lines["ray"]
        pids = {name: int((settings.state_dir / name / f"{name}.pid").read_text()) for name in ("kafka", "ray")}
        assert all(pid_alive(p) for p in pids.values())
        again = vlm(["local", "up", "kafka", "ray"], env)  # idempotent, on the CPUs it started with
        assert again.returncode == 0, again.stdout + again.stderr
        assert pids == {name: int((settings.state_dir / name / f"{name}.pid").read_text()) for name in pids}
        if model is not None:
            rest = everywhere - {model}
            assert f"model forward passes run on CPUs {model}" in up.stdout
            assert f"model forward passes run on CPUs {model}" in status.stdout
            tree = [p for pid in pids.values() for p in process_tree(pid)]
            assert len(tree) > 3
            assert all(os.sched_getaffinity(p) == rest for p in tree), "every service off the model's CPU"
            raylets = [p for p in tree if b"raylet" in Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")[0]]
            assert raylets and f"{MODEL_CPUS_ENV}={model}".encode() in Path(f"/proc/{raylets[0]}/environ").read_bytes()
            other = vlm(["local", "up", "kafka", "ray", "--model-cpus", str(min(everywhere))], env)
            assert other.returncode != 0 and "Traceback" not in other.stderr + other.stdout
            assert f"keeps CPUs {model} for the model" in other.stdout + other.stderr
    finally:
        down = vlm(["local", "down"], env)
    assert down.returncode == 0, down.stderr
    assert not any(pid_alive(p) for p in pids.values())
    # Nothing of theirs is left: no live process in the process groups we started.
    assert all(process_group_members(p) == [] for p in pids.values())
    status = vlm(["local", "status"], env)
    assert "running" not in status.stdout
    assert settings.recorded_model_cpus() is None, "a stack that is down keeps no CPUs"
