"""Label Studio's formats and ours: the labelling config a task's classes give, predictions
as pre-annotations, and completed annotations as ``vlm.labels/v1`` samples. Pure logic;
the HTTP client and Kafka live in ``services/labelstudio.py``.

Label Studio gives boxes in percent of the image (x, y, width, height from the top left);
our contracts give pixels ``[x1, y1, x2, y2]``.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import quoteattr

from vlm_core.contracts.frame import Encoding
from vlm_core.contracts.labels import LabeledObject, LabeledSample
from vlm_core.contracts.task import Task
from vlm_core.contracts.to_label import ToLabel
from vlm_core.contracts.truth import FrameTruth
from vlm_core.errors import ConfigError, LabelError

FROM_NAME = "label"
TO_NAME = "image"
#: The task data field that identifies a frame (``camera:seq``) across syncs.
REF_FIELD = "vlm_ref"
_DATA_URI = re.compile(r"^data:image/(jpeg|png);base64,(.*)$", re.S)
LABELLED_TASKS = (Task.CLASSIFICATION, Task.DETECTION)


def project_title(dataset: str, task: Task) -> str:
    return f"vlm-stream {dataset} ({task.value})"


def label_config(task: Task, class_names: Sequence[str]) -> str:
    """The labelling interface of ``task`` over ``class_names``: boxes for detection, one
    choice for classification."""
    if not class_names:
        raise ConfigError("a labelling project needs at least one class name")
    if task is Task.DETECTION:
        labels = "".join(f"<Label value={quoteattr(name)}/>" for name in class_names)
        control = f'<RectangleLabels name="{FROM_NAME}" toName="{TO_NAME}">{labels}</RectangleLabels>'
    elif task is Task.CLASSIFICATION:
        choices = "".join(f"<Choice value={quoteattr(name)}/>" for name in class_names)
        control = (
            f'<Choices name="{FROM_NAME}" toName="{TO_NAME}" choice="single" showInline="true">{choices}</Choices>'
        )
    else:
        raise ConfigError(
            f"labelling {task.value} in Label Studio is not supported",
            hint="label masks with `vlm label push` from VOC or COCO files",
        )
    return f'<View><Image name="{TO_NAME}" value="$image" zoom="true"/>{control}</View>'


def data_uri(image: bytes, encoding: Encoding) -> str:
    return f"data:image/{encoding.value};base64,{base64.b64encode(image).decode('ascii')}"


def image_from_data_uri(uri: str) -> tuple[bytes, Encoding]:
    match = _DATA_URI.match(uri)
    if match is None:
        raise LabelError("the task's image is not a JPEG or PNG data URI", reason="undecodable")
    try:
        return base64.b64decode(match.group(2), validate=True), Encoding(match.group(1))
    except binascii.Error:
        raise LabelError("the task's image is not valid base64", reason="undecodable") from None


def sample_id(ref: str) -> str:
    """The labels topic's sample id of a frame ``camera:seq``."""
    return ref.replace(":", "-")


def prediction(sample: ToLabel, task: Task, *, min_score: float = 0.0) -> dict[str, Any] | None:
    """The model's output of ``sample`` as a Label Studio prediction; None without one."""
    output = sample.prediction.get(task.value)
    if output is None or sample.frame_size is None:
        return None
    width, height = sample.frame_size
    model = sample.models.get(task.value, "unknown")
    results: list[dict[str, Any]] = []
    if task is Task.DETECTION:
        results.extend(
            {**rectangle(det["box"], det["label"], width, height), "score": det["score"]}
            for det in output.get("detections", [])
            if det["score"] >= min_score
        )
    else:
        results.extend({**choice(c["label"]), "score": c["score"]} for c in output.get("top_k", [])[:1])
    return {"model_version": model, "score": sample.scores.get(task.value, 0.0), "result": results}


def rectangle(box: Sequence[float], label: str, width: int, height: int) -> dict[str, Any]:
    """A box ``[x1, y1, x2, y2]`` in pixels as a Label Studio region (percent of the image)."""
    x1, y1, x2, y2 = box
    return {
        "from_name": FROM_NAME,
        "to_name": TO_NAME,
        "type": "rectanglelabels",
        "original_width": width,
        "original_height": height,
        "value": {
            "x": 100 * x1 / width,
            "y": 100 * y1 / height,
            "width": 100 * (x2 - x1) / width,
            "height": 100 * (y2 - y1) / height,
            "rotation": 0,
            "rectanglelabels": [label],
        },
    }


def choice(label: str) -> dict[str, Any]:
    return {"from_name": FROM_NAME, "to_name": TO_NAME, "type": "choices", "value": {"choices": [label]}}


def truth_annotation(truth: FrameTruth, task: Task, width: int, height: int) -> list[dict[str, Any]] | None:
    """What a perfect labeller draws on a frame whose truth is known (the loop's oracle):
    every true box; for classification the one object's class (None when the frame holds
    other than one object, which has no single class)."""
    if task is Task.DETECTION:
        return [rectangle(o.box, o.label, width, height) for o in truth.objects]
    if len(truth.objects) != 1:
        return None
    return [choice(truth.objects[0].label)]


def task_data(sample: ToLabel, image: bytes, encoding: Encoding) -> dict[str, Any]:
    return {
        "image": data_uri(image, encoding),
        REF_FIELD: sample.ref,
        "camera_id": sample.camera_id,
        "seq": sample.seq,
        "capture_ts_ms": sample.capture_ts_ms,
        "frame": f"{sample.frame.topic}/{sample.frame.partition}/{sample.frame.offset}",
    }


@dataclass(frozen=True)
class Completed:
    """The annotation of a task that counts: the latest one not cancelled."""

    task_id: int
    annotation_id: int
    updated_at: str
    result: Sequence[Mapping[str, Any]]


def completed(task_id: int, annotations: Sequence[Mapping[str, Any]]) -> Completed | None:
    live = [a for a in annotations if not a.get("was_cancelled")]
    if not live:
        return None
    latest = max(live, key=lambda a: (str(a.get("updated_at") or a.get("created_at") or ""), int(a["id"])))
    updated = str(latest.get("updated_at") or latest.get("created_at") or "")
    return Completed(task_id, int(latest["id"]), updated, latest.get("result") or [])


def source(project_id: int, done: Completed) -> str:
    return f"labelstudio:{project_id}/{done.task_id}/{done.annotation_id}@{done.updated_at}"


def labeled_sample(
    done: Completed,
    data: Mapping[str, Any],
    *,
    project_id: int,
    dataset: str,
    task: Task,
    class_names: Sequence[str],
) -> LabeledSample:
    """A completed Label Studio task as a ``vlm.labels/v1`` sample; an annotation that names
    a class outside ``class_names`` or has no usable region raises LabelError."""
    ref = data.get(REF_FIELD)
    if not isinstance(ref, str) or not ref:
        raise LabelError(f"task {done.task_id} has no {REF_FIELD}: not made by the sync", reason="bad_annotation")
    image, encoding = image_from_data_uri(str(data.get("image", "")))
    known = set(class_names)

    def labeled(*, class_name: str | None = None, objects: tuple[LabeledObject, ...] = ()) -> LabeledSample:
        return LabeledSample(
            dataset,
            sample_id(ref),
            task,
            image,
            encoding,
            tuple(class_names),
            class_name=class_name,
            objects=objects,
            source=source(project_id, done),
        )

    if task is Task.CLASSIFICATION:
        choices = [c for r in done.result if r.get("type") == "choices" for c in r.get("value", {}).get("choices", [])]
        if len(choices) != 1 or choices[0] not in known:
            raise LabelError(f"task {done.task_id}: expected one known class, got {choices}", reason="bad_annotation")
        return labeled(class_name=choices[0])
    objects = []
    for region in done.result:
        if region.get("type") != "rectanglelabels":
            continue
        value = region.get("value", {})
        names = value.get("rectanglelabels", [])
        if len(names) != 1 or names[0] not in known:
            raise LabelError(f"task {done.task_id}: box labelled {names}, not one known class", reason="bad_annotation")
        width, height = float(region["original_width"]), float(region["original_height"])
        x1, y1 = value["x"] * width / 100, value["y"] * height / 100
        x2, y2 = x1 + value["width"] * width / 100, y1 + value["height"] * height / 100
        box = (max(0.0, x1), max(0.0, y1), min(width, x2), min(height, y2))
        if box[2] - box[0] >= 1 and box[3] - box[1] >= 1:
            objects.append(LabeledObject(names[0], box))
    return labeled(objects=tuple(objects))
