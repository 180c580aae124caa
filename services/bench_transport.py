"""``vlm bench transport``: what each way of getting annotated frames to a browser costs the
view's server, per frame, on the same frames and results.

- ``websocket`` (what the view does): the camera's own JPEG and the result's JSON, framed
  once per frame for every viewer (:func:`services.view.hub.frame_message`); the browser
  draws the overlay on a canvas.
- ``mjpeg``: a multipart JPEG stream can carry pixels only, so the server must decode the
  JPEG, draw boxes, labels and track ids with OpenCV, and encode a new JPEG: once per frame,
  shared by every viewer of that camera. The metadata (scores, track ids, events) cannot
  reach the page in the same stream.

WebRTC needs a video encoder per camera (H.264 or VP8) and an ICE/DTLS session per viewer;
no encoder for it ships here, so it is not measured (see README "Live view").

Each run times both over the same frames in the same process; the report gives medians of
the runs with their range, as CPU milliseconds per frame (``time.process_time``) and bytes
per frame on the wire.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from vlm_core.contracts.frame import Frame
from vlm_core.contracts.result import Detection, Detections, ModelRef, Result
from vlm_core.contracts.task import Task
from vlm_core.cpu import Host, describe_host
from vlm_core.datasets.scenes import SceneConfig, SceneVideo
from vlm_core.stream.live import LiveFrame

MJPEG_QUALITY = 80
BOUNDARY = b"--vlmframe"


@dataclass(frozen=True)
class TransportFigures:
    cpu_ms_per_frame: float
    bytes_per_frame: float


@dataclass
class TransportReport:
    frame_size: str
    frames: int
    runs: list[dict[str, TransportFigures]]
    summary: dict[str, Any]
    command: str = ""
    host: Host = field(default_factory=describe_host)


def _frames(count: int, width: int, height: int) -> list[tuple[Frame, Result]]:
    video = SceneVideo(SceneConfig(width=width, height=height, min_items=4, max_items=4), seed=3)
    model = ModelRef("bench-detector", "1")
    out = []
    for seq in range(count):
        sample = video.next()
        frame = Frame.from_image(sample.image, camera_id="bench", seq=seq)
        detections = tuple(
            Detection(tuple(float(v) for v in box), f"class-{label}", int(label), 0.8, track_id=i + 1)  # type: ignore[arg-type]
            for i, (box, label) in enumerate(zip(sample.boxes.tolist(), sample.box_labels.tolist(), strict=True))
        )
        result = Result("bench", seq, frame.capture_ts_ms, frame.capture_ts_ms + 40, width, height, {
            Task.DETECTION: Detections(model, detections)
        })  # fmt: skip
        out.append((frame, result))
    return out


def websocket_message(frame: Frame, result: Result) -> bytes:
    from services.view.hub import frame_message

    return frame_message(LiveFrame(frame.camera_id, frame.seq, frame.capture_ts_ms, frame.data, "image/jpeg", result))


def mjpeg_part(frame: Frame, result: Result) -> bytes:
    """The server-side drawing an MJPEG stream needs: decode, draw, encode, frame the part."""
    image = cv2.imdecode(np.frombuffer(frame.data, np.uint8), cv2.IMREAD_COLOR)
    detection = result.detection
    for det in detection.detections if detection is not None else ():
        x1, y1, x2, y2 = (round(v) for v in det.box)
        cv2.rectangle(image, (x1, y1), (x2, y2), (56, 56, 255), 2)
        text = f"{det.label}#{det.track_id} {det.score:.2f}"
        cv2.putText(image, text, (x1, max(12, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1)
    ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, MJPEG_QUALITY])
    if not ok:
        raise RuntimeError("JPEG encode failed")
    data = jpeg.tobytes()
    return BOUNDARY + b"\r\nContent-Type: image/jpeg\r\nContent-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data


TRANSPORTS = {"websocket": websocket_message, "mjpeg": mjpeg_part}


def _time(encode: Any, frames: list[tuple[Frame, Result]]) -> TransportFigures:
    started = time.process_time()
    sizes = [len(encode(frame, result)) for frame, result in frames]
    return TransportFigures((time.process_time() - started) * 1000 / len(frames), float(np.mean(sizes)))


def run_transport_bench(*, frames: int, width: int, height: int, runs: int, command: str = "") -> TransportReport:
    cv2.setNumThreads(1)  # one core, as one view process gets
    data = _frames(frames, width, height)
    for encode in TRANSPORTS.values():  # warm-up: imports, allocator, OpenCV's first calls
        _time(encode, data[:10])
    results: list[dict[str, TransportFigures]] = []
    for index in range(runs):
        order = list(TRANSPORTS) if index % 2 == 0 else list(reversed(TRANSPORTS))  # alternate
        results.append({name: _time(TRANSPORTS[name], data) for name in order})
    summary: dict[str, Any] = {}
    for name in TRANSPORTS:
        cpu = [r[name].cpu_ms_per_frame for r in results]
        summary[name] = {
            "cpu_ms_per_frame": {"median": statistics.median(cpu), "min": min(cpu), "max": max(cpu)},
            "bytes_per_frame": statistics.median(r[name].bytes_per_frame for r in results),
        }
    ratios = [r["mjpeg"].cpu_ms_per_frame / max(r["websocket"].cpu_ms_per_frame, 1e-9) for r in results]
    summary["mjpeg_over_websocket_cpu"] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
    return TransportReport(f"{width}x{height}", frames, results, summary, command)


def write_report(report: TransportReport, path: Path | None) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(report), indent=2) + "\n")
