"""``vlm results``: read the results topic and print each result on one line (and the
topic follower that ``vlm events`` shares)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from rich.console import Console
from rich.markup import escape

from vlm_core.contracts.result import Result
from vlm_core.errors import ResultError, VlmError

_D = TypeVar("_D")


def describe(result: Result) -> str:
    parts = [f"[bold]{escape(result.camera_id)}[/]#{result.seq}", f"{result.latency_ms}ms"]
    if result.classification and result.classification.top:
        top = result.classification.top
        parts.append(f"class={escape(top.label)} ({top.score:.2f})")
    if result.detection is not None:
        dets = ", ".join(
            f"{escape(d.label)}{'' if d.track_id is None else f'#{d.track_id}'} {d.score:.2f}"
            for d in result.detection.detections[:4]
        )
        parts.append(f"detections[{len(result.detection.detections)}]={dets or '-'}")
    if result.segmentation is not None:
        segs = ", ".join(f"{escape(c.label)} {c.pixel_fraction:.0%}" for c in result.segmentation.classes[:3])
        parts.append(f"segments={segs or '-'}")
    versions = sorted(
        {
            f"{o.model.name}@{o.model.version}"
            for o in (result.classification, result.detection, result.segmentation)
            if o is not None
        }
    )
    parts.append(f"[dim]{escape(' '.join(versions))}[/]")
    return "  ".join(parts)


@dataclass(frozen=True)
class Follow:
    """What ``vlm results`` and ``vlm events`` print and for how long."""

    follow: bool = False
    camera: str | None = None
    from_beginning: bool = False
    limit: int | None = None
    as_json: bool = False


def follow_results(bootstrap: str, topic: str, options: Follow, *, console: Console) -> int:
    """Print results; returns how many were shown (see :func:`follow_topic`)."""
    return follow_topic(bootstrap, topic, Reader(Result.from_bytes, ResultError, describe, "result"), options, console)


@dataclass(frozen=True)
class Reader(Generic[_D]):
    """How one topic's documents are parsed and shown."""

    parse: Callable[[bytes], _D]
    error: type[VlmError]
    describe: Callable[[_D], str]
    noun: str
    #: Extra filter beyond the camera (``vlm events --type``).
    keep: Callable[[_D], bool] = lambda _doc: True


def follow_topic(bootstrap: str, topic: str, reader_spec: Reader[Any], options: Follow, console: Console) -> int:
    """Print a topic's documents; returns how many were shown. Not on a terminal (piped),
    each is exactly one line: plain text, or compact JSON with ``--json``. Without
    ``--follow``, a filter that matched nothing raises a VlmError naming the cameras that
    were seen."""
    from services.kafka_io import topic_reader

    noun = reader_spec.noun
    follow, camera, limit, as_json = options.follow, options.camera, options.limit, options.as_json
    from_beginning = options.from_beginning
    reader, partitions = topic_reader(bootstrap, topic, from_beginning=from_beginning or not follow)
    if not partitions:
        reader.close()
        raise VlmError(f"topic {topic!r} does not exist", hint="start the pipeline with `vlm serve`, or pass --topic")
    ends = reader.end_offsets(partitions)
    shown = read = 0
    cameras: Counter[str] = Counter()
    terminal = console.is_terminal
    try:
        while limit is None or shown < limit:
            batches = reader.poll(timeout_ms=500)
            for records in batches.values():
                for rec in records:
                    read += 1
                    try:
                        doc = reader_spec.parse(rec.value)
                    except reader_spec.error as exc:
                        console.print(
                            f"invalid {noun} at {rec.partition}/{rec.offset}: {exc}",
                            markup=False,
                            style="red",
                            soft_wrap=True,
                        )
                        continue
                    cameras[doc.camera_id] += 1
                    if (camera is not None and doc.camera_id != camera) or not reader_spec.keep(doc):
                        continue
                    if as_json and terminal:
                        console.print_json(json.dumps(doc.to_json()))
                    elif as_json:
                        console.file.write(json.dumps(doc.to_json(), ensure_ascii=False) + "\n")
                    else:
                        console.print(reader_spec.describe(doc), highlight=False, soft_wrap=True)
                    shown += 1
                    if limit is not None and shown >= limit:
                        return shown
            if not follow and all(reader.position(tp) >= ends[tp] for tp in partitions):
                break
    except KeyboardInterrupt:
        pass
    finally:
        reader.close()
    if not follow and camera is not None and not shown:
        seen = ", ".join(repr(c) for c, _n in cameras.most_common(10)) or "none"
        raise VlmError(
            f"no {noun}s matched camera {camera!r} ({read} {noun}s read from {topic})",
            hint=f"cameras seen: {seen}",
        )
    return shown
