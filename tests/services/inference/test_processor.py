"""The stream processor's replica runs no model, so it does not load torch (about 500 MB
of resident memory in every process that imports it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]

CHECK = """
import sys
import services.inference.processor, services.ingest.worker
from vlm_core.models import ModelSpec
loaded = sorted(name for name in sys.modules if name.split(".")[0] in ("torch", "torchvision"))
print("loaded:", ",".join(loaded[:5]) or "none")
"""


def test_the_processor_and_the_ingest_worker_import_without_torch() -> None:
    proc = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "loaded: none"
