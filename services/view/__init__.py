"""The live web view (``vlm view``): frames joined with results, drawn in the browser."""

from __future__ import annotations

from pathlib import Path

from services.view.app import TOKEN_ENV, ViewServer, ViewSettings, build_view_app, is_loopback, serve_view
from services.view.hub import LiveHub, Viewer, ViewMetrics, frame_message


def hub_from_config(config: Path | None, bootstrap: str) -> LiveHub:
    """A hub on the topics, zones and lines of a Serve config (default: the shipped one)."""
    from services.inference.deploy import load_config

    _name, pipeline = load_config(config)
    return LiveHub(bootstrap, pipeline.topics, pipeline.cameras)


__all__ = [
    "TOKEN_ENV",
    "LiveHub",
    "ViewMetrics",
    "ViewServer",
    "ViewSettings",
    "Viewer",
    "build_view_app",
    "frame_message",
    "hub_from_config",
    "is_loopback",
    "serve_view",
]
