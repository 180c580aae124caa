"""``vlm results``: read the results topic and print each result on one line."""

from __future__ import annotations

import json
from collections import Counter

from rich.console import Console
from rich.markup import escape

from vlm_core.contracts.result import Result
from vlm_core.errors import ResultError, VlmError


def describe(result: Result) -> str:
    parts = [f"[bold]{escape(result.camera_id)}[/]#{result.seq}", f"{result.latency_ms}ms"]
    if result.classification and result.classification.top:
        top = result.classification.top
        parts.append(f"class={escape(top.label)} ({top.score:.2f})")
    if result.detection is not None:
        dets = ", ".join(f"{escape(d.label)} {d.score:.2f}" for d in result.detection.detections[:4])
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


def follow_results(
    bootstrap: str,
    topic: str,
    *,
    console: Console,
    follow: bool,
    camera: str | None,
    from_beginning: bool,
    limit: int | None,
    as_json: bool,
) -> int:
    """Print results; returns how many were shown. Not on a terminal (piped), each result
    is exactly one line: plain text, or compact JSON with ``--json``. Without ``--follow``,
    a filter that matched nothing raises a VlmError naming the cameras that were seen."""
    from services.kafka_io import topic_reader

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
                        result = Result.from_bytes(rec.value)
                    except ResultError as exc:
                        console.print(
                            f"invalid result at {rec.partition}/{rec.offset}: {exc}",
                            markup=False,
                            style="red",
                            soft_wrap=True,
                        )
                        continue
                    cameras[result.camera_id] += 1
                    if camera is not None and result.camera_id != camera:
                        continue
                    if as_json and terminal:
                        console.print_json(json.dumps(result.to_json()))
                    elif as_json:
                        console.file.write(json.dumps(result.to_json(), ensure_ascii=False) + "\n")
                    else:
                        console.print(describe(result), highlight=False, soft_wrap=True)
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
            f"no results matched camera {camera!r} ({read} results read from {topic})",
            hint=f"cameras seen: {seen}",
        )
    return shown
