"""Files the services read at run time, shipped as package data.

They live in ``deploy/`` (Kafka's pom, server.properties template and log4j2 config, the
Prometheus config and alert rules, the Serve config); this package links them, so a
checkout and an installed wheel find them the same way.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from vlm_core.errors import InfrastructureError


def resource(relative: str) -> Path:
    """The path of a shipped file, e.g. ``resource("serve/pipeline.yaml")``."""
    path = Path(str(resources.files(__name__).joinpath(relative)))
    if not path.is_file():
        raise InfrastructureError(f"shipped file {relative} is missing from {path.parent}", hint="reinstall vlm-stream")
    return path
