"""checkov on the rendered chart, default and full values: no failed check, and every
skipped one has its written reason in helm/checkov-skips.yaml."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.helm.test_chart import CHART, FULL_VALUES, helm

SKIPS = CHART.parent / "checkov-skips.yaml"


def _skips() -> list[dict[str, str]]:
    skips = yaml.safe_load(SKIPS.read_text())
    for skip in skips:
        assert set(skip) == {"id", "check", "reason"}, skip
        assert len(skip["reason"].split()) >= 10, f"{skip['id']} needs a real reason"
    return skips


@pytest.mark.parametrize("values", [None, FULL_VALUES], ids=["default", "full"])
def test_the_rendered_chart_passes_checkov(values: Path | None, tmp_path: Path) -> None:
    checkov = shutil.which("checkov")
    assert checkov, "checkov is installed by deploy/local/install-tools.sh (make test puts it on PATH)"
    args = ["template", "vlm", str(CHART), "--namespace", "vision"] + (["-f", str(values)] if values else [])
    rendered = helm(*args)
    assert rendered.returncode == 0, rendered.stderr
    manifest = tmp_path / "chart.yaml"
    manifest.write_text(rendered.stdout)
    skipped = ",".join(s["id"] for s in _skips())
    proc = subprocess.run(
        [
            checkov,
            "-f",
            str(manifest),
            "--framework",
            "kubernetes",
            "--skip-download",
            "--quiet",
            "--compact",
            "-o",
            "json",
            "--skip-check",
            skipped,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    reports = json.loads(proc.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    failed = [f"{c['check_id']} {c['resource']}" for r in reports for c in r["results"]["failed_checks"]]
    assert not failed, f"checkov failed checks: {failed}"
    assert sum(r["summary"]["passed"] for r in reports) > 50, "checkov checked next to nothing"
