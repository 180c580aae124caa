"""The library stands alone: it imports without the services, Ray, the Kafka client, typer
or rich (a fresh interpreter in which importing any of them fails)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

BLOCKER = """
import importlib.abc, sys
BLOCKED = {"services", "ray", "kafka", "typer", "rich"}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked in this test")
        return None
sys.meta_path.insert(0, Block())
for blocked in BLOCKED:
    try:
        __import__(blocked)
    except ImportError:
        pass
    else:
        raise SystemExit(f"{blocked} could still be imported")
import vlm_core.stream, vlm_core.tasks, vlm_core.contracts.frame, vlm_core.contracts.result
import vlm_core.training.loops, vlm_core.training.evaluate, vlm_core.registry, vlm_core.pipeline
print("library imported without", ", ".join(sorted(BLOCKED)))
"""


def test_library_imports_with_services_ray_kafka_typer_and_rich_blocked() -> None:
    proc = subprocess.run([sys.executable, "-c", BLOCKER], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "library imported without kafka, ray, rich, services, typer" in proc.stdout
