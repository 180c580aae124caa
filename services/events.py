"""``vlm events``: read the events topic and print each event on one line."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape

from services.results import Follow, Reader, follow_topic
from vlm_core.contracts.event import Event, EventError, EventType
from vlm_core.errors import ConfigError


def describe_event(event: Event) -> str:
    parts = [f"[bold]{escape(event.camera_id)}[/]#{event.seq}", f"[cyan]{event.type.value}[/]"]
    if event.track_id is not None:
        parts.append(f"track {event.track_id} ({escape(event.label or str(event.class_id))})")
    if event.line is not None:
        parts.append(f"line {escape(event.line)} {event.direction}")
    if event.zone is not None:
        parts.append(f"zone {escape(event.zone)}")
    if event.dwell_s is not None:
        parts.append(f"dwell {event.dwell_s:.1f}s")
    if event.counts is not None:
        zones = event.counts.get("zones", {})
        lines = event.counts.get("lines", {})
        parts.extend(
            f"{escape(name)}: {c['occupancy']} in zone ({c['entered']} entered, {c['exited']} left)"
            for name, c in zones.items()
        )
        parts.extend(f"{escape(name)}: in {c['in']} out {c['out']}" for name, c in lines.items())
    parts.append(f"[dim]{event.frame}[/]")
    return "  ".join(parts)


def parse_types(types: list[str] | None) -> set[EventType] | None:
    if not types:
        return None
    known = {t.value: t for t in EventType}
    unknown = [t for t in types if t not in known]
    if unknown:
        raise ConfigError(f"unknown event type {', '.join(unknown)}", hint=f"use one of {', '.join(known)}")
    return {known[t] for t in types}


def follow_events(
    bootstrap: str, topic: str, options: Follow, *, types: set[EventType] | None, console: Console
) -> int:
    """Print events (of ``types`` only, when given); returns how many were shown."""
    reader = Reader(
        Event.from_bytes, EventError, describe_event, "event", keep=lambda e: types is None or e.type in types
    )
    return follow_topic(bootstrap, topic, reader, options, console)
