"""`vlm local up|status|down` on its own ports and state dir, as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from services.localstack.stack import pid_alive, process_group_members
from vlm_core.config import LocalSettings

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
    try:
        up = vlm(["local", "up", "kafka", "ray"], env)
        assert up.returncode == 0, up.stdout + up.stderr
        status = vlm(["local", "status"], env)
        assert status.returncode == 0
        lines = {line.split("│")[1].strip(): line for line in status.stdout.splitlines() if line.count("│") > 3}
        assert "running" in lines["kafka"] and "49092" in lines["kafka"]
        assert "running" in lines["ray"] and "46379" in lines["ray"]
        pids = {name: int((settings.state_dir / name / f"{name}.pid").read_text()) for name in ("kafka", "ray")}
        assert all(pid_alive(p) for p in pids.values())
        again = vlm(["local", "up", "kafka", "ray"], env)  # idempotent
        assert again.returncode == 0
        assert pids == {name: int((settings.state_dir / name / f"{name}.pid").read_text()) for name in pids}
    finally:
        down = vlm(["local", "down"], env)
    assert down.returncode == 0, down.stderr
    assert not any(pid_alive(p) for p in pids.values())
    # Nothing of theirs is left: no live process in the process groups we started.
    assert all(process_group_members(p) == [] for p in pids.values())
    status = vlm(["local", "status"], env)
    assert "running" not in status.stdout
