"""`vlm local up|status|down` on its own ports and state dir, as a user runs it: the
`vlm` of a wheel built from this checkout and installed on its own."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from services.localstack.stack import pid_alive, process_group_members, process_tree
from vlm_core.config import LocalSettings
from vlm_core.cpu import MODEL_CPUS_ENV, machine_cpus

pytestmark = pytest.mark.integration


ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built from a copy of what it packs and installed into a folder
    of its own; returns that folder (its ``bin/vlm`` is the console script)."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    for package in ("services", "vlm_core"):
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    built = subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(work / "dist"), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = (work / "dist").glob("vlm_stream-*.whl")
    target = work / "site"
    done = subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(target), str(wheel)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return target


def vlm(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``vlm`` as installed from the wheel, run outside the checkout (its dependencies come
    from this interpreter's environment; its own code only from the wheel)."""
    site = Path(env["PYTHONPATH"].split(os.pathsep)[0])
    return subprocess.run(
        [str(site / "bin" / "vlm"), *args], env=env, cwd=site.parent, capture_output=True, text=True, timeout=240
    )


def test_the_wheel_holds_the_stack_and_runs_from_its_own_files(installed: Path) -> None:
    where = subprocess.run(
        [sys.executable, "-c", "import services, vlm_core; print(services.__file__); print(vlm_core.__file__)"],
        env={**os.environ, "PYTHONPATH": str(installed)},
        cwd=installed.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert where.returncode == 0, where.stderr
    assert all(Path(line).is_relative_to(installed) for line in where.stdout.split()), where.stdout
    packed = {path.relative_to(installed).as_posix() for path in installed.rglob("*") if path.is_file()}
    for data in ("services/resources/kafka", "services/resources/prometheus", "services/view/static"):
        assert any(name.startswith(data + "/") for name in packed), f"{data} is not in the wheel"
    assert any(name.startswith("vlm_core/contracts/schemas/") and name.endswith(".json") for name in packed)


def test_up_status_down(tmp_path: Path, installed: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": str(installed),
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
