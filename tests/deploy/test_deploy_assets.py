"""Deployment assets that cannot run here (no Docker engine, no VMs), checked as files:
Dockerfiles with hadolint and their COPY sources, the compose file's mounts, and the Ray
cluster launcher config against Ray's own schema."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted((ROOT / "deploy" / "docker").glob("Dockerfile.*"))


def test_there_is_a_cpu_and_a_cuda_image() -> None:
    assert {p.name for p in DOCKERFILES} >= {"Dockerfile.cpu", "Dockerfile.cuda"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(dockerfile: Path) -> None:
    hadolint = shutil.which("hadolint")
    assert hadolint, "hadolint is not on PATH: `make test` installs it (deploy/local/install-tools.sh)"
    result = subprocess.run(
        [hadolint, "--failure-threshold", "info", str(dockerfile)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_is_multi_stage_non_root_and_copies_existing_files(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    assert len(re.findall(r"^FROM ", text, re.M)) >= 2, "multi-stage"
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0"), "the final stage runs as a non-root user"
    assert re.search(r"^HEALTHCHECK ", text, re.M)
    copies = re.findall(r"^COPY (?!--from)(.+)$", text, re.M)
    assert copies
    for line in copies:
        *sources, _target = line.split()
        for source in sources:
            assert (ROOT / source).exists(), f"{dockerfile.name}: COPY {source} does not exist in the build context"


def test_compose_mounts_and_build_files_exist() -> None:
    compose_dir = ROOT / "deploy" / "compose"
    compose = yaml.safe_load((compose_dir / "docker-compose.yml").read_text())
    assert {"kafka", "ray", "prometheus", "grafana"} <= set(compose["services"])
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (compose_dir / source).exists(), f"compose mounts a missing file: {source}"
        if "build" in service:
            assert (compose_dir / service["build"]["context"] / service["build"]["dockerfile"]).is_file()


def test_grafana_provisioning_points_at_the_dashboard() -> None:
    provider = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/vlm-stream.yml").read_text())
    compose = yaml.safe_load((ROOT / "deploy/compose/docker-compose.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    mounts = [v.split(":")[1] for v in compose["services"]["grafana"]["volumes"]]
    assert any(m.startswith(path) and m.endswith("vlm-stream-dashboard.json") for m in mounts)


def test_ray_cluster_launcher_config_is_valid_for_ray() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((ROOT / "deploy" / "ray" / "cluster.yaml").read_text())
    validate_config(prepare_config(config))
    commands = " ".join(config["head_start_ray_commands"])
    assert "--metrics-export-port=8080" in commands, "Prometheus scrapes Ray's metrics port"


def test_the_gpu_bench_refuses_in_one_line_where_torch_sees_no_gpu(tmp_path: Path) -> None:
    import os
    import sys

    import torch

    env = {**os.environ, "VLM_VENV": sys.prefix, "CUDA_VISIBLE_DEVICES": ""}
    env.pop("VLM_GPU_BENCH_ALLOW_CPU", None)
    result = subprocess.run(
        ["bash", str(ROOT / "deploy" / "gpu" / "bench.sh"), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        f"deploy/gpu/bench.sh: torch {torch.__version__} sees no CUDA device; run it on a GPU machine "
        "(VLM_GPU_BENCH_ALLOW_CPU=1 smoke-tests it on the CPU)"
    ]
    assert not list((tmp_path / "out").glob("*.json"))
