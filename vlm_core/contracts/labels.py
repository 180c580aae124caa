"""The label contract: one labeled image on the ``vlm.labels`` Kafka topic (``vlm.labels/v1``).

- **key**: ``<dataset>/<sample id>``. A later record with the same key relabels the sample,
  so the topic can be log-compacted; a record with a null value (a tombstone) deletes it.
- **value**: the encoded image bytes (JPEG or PNG, never base64).
- **headers**:

  ========================  =============================================================
  ``vlm-schema``            ``vlm.labels/v1``
  ``vlm-dataset``           dataset name, 1-64 of ``[A-Za-z0-9._-]``
  ``vlm-sample-id``         1-256 printable characters, unique within the dataset
  ``vlm-task``              ``classification``, ``detection`` or ``segmentation``
  ``vlm-encoding``          ``jpeg`` or ``png``
  ``vlm-classes``           JSON list of the dataset's class names, in model order.
                            Optional for classification and detection (the snapshot then
                            uses the sorted names seen); required for segmentation, where
                            index 0 is the background and mask values index this list.
  ``vlm-annotation``        JSON. classification: ``{"class": "Coat"}``;
                            detection: ``{"objects": [{"class": "Coat", "box": [x1, y1, x2, y2]}]}``
                            (pixels); segmentation: ``{}``.
  ``vlm-mask``              segmentation only: an 8-bit single-channel PNG the size of the
                            image; each pixel a class index, 255 = ignore.
  ``vlm-source``            optional: where the label came from, as its producer names it
                            (the Label Studio sync: ``labelstudio:<project>/<task>/<annotation>@<updated>``);
                            a sync compares it to tell a relabel from a repeat.
  ========================  =============================================================

Parsing checks the metadata only; :meth:`LabeledSample.to_sample` decodes the pixels.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from vlm_core.contracts.frame import Encoding, KafkaHeaders, KafkaRecord, decode_image, encode_image, header_text
from vlm_core.contracts.sample import MASK_IGNORE, Sample
from vlm_core.contracts.schema import strict_json
from vlm_core.contracts.task import Task
from vlm_core.errors import FrameError, LabelError

LABELS_SCHEMA = "vlm.labels/v1"
_DATASET_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_SAMPLE_ID_MAX = 256


class LabelHeader(str, enum.Enum):
    SCHEMA = "vlm-schema"
    DATASET = "vlm-dataset"
    SAMPLE_ID = "vlm-sample-id"
    TASK = "vlm-task"
    ENCODING = "vlm-encoding"
    CLASSES = "vlm-classes"
    ANNOTATION = "vlm-annotation"
    MASK = "vlm-mask"
    SOURCE = "vlm-source"


@dataclass(frozen=True)
class LabeledObject:
    class_name: str
    box: tuple[float, float, float, float]


@dataclass(frozen=True)
class LabeledSample:
    """One labeled image as it travels on ``vlm.labels``; class references are names,
    so producers need not agree on indices."""

    dataset: str
    sample_id: str
    task: Task
    image: bytes
    encoding: Encoding
    classes: tuple[str, ...] = ()
    class_name: str | None = None
    objects: tuple[LabeledObject, ...] = ()
    mask: bytes | None = None
    #: Provenance (``vlm-source``); None when the producer gave none.
    source: str | None = None

    @classmethod
    def from_sample(
        cls,
        sample: Sample,
        *,
        dataset: str,
        sample_id: str,
        task: Task,
        class_names: Sequence[str],
        image_bytes: bytes | None = None,
        encoding: Encoding = Encoding.PNG,
    ) -> LabeledSample:
        """From a dataset reader's Sample; ``image_bytes`` sends a file as it is instead of re-encoding."""
        if image_bytes is None:
            image_bytes = encode_image(sample.image, encoding)
        names = tuple(class_names)
        if task is Task.CLASSIFICATION:
            if sample.label is None:
                raise LabelError(f"sample {sample_id} has no class label", reason="bad_annotation")
            return cls(dataset, sample_id, task, image_bytes, encoding, names, class_name=names[sample.label])
        if task is Task.DETECTION:
            objects = tuple(
                LabeledObject(names[int(label)], (box[0], box[1], box[2], box[3]))
                for box, label in zip(sample.boxes.tolist(), sample.box_labels.tolist(), strict=True)
            )
            return cls(dataset, sample_id, task, image_bytes, encoding, names, objects=objects)
        if sample.mask is None:
            raise LabelError(f"sample {sample_id} has no class mask", reason="bad_annotation")
        return cls(dataset, sample_id, task, image_bytes, encoding, names, mask=_png(sample.mask))

    # -- wire format ------------------------------------------------------------------
    @property
    def key(self) -> bytes:
        return label_key(self.dataset, self.sample_id)

    def annotation(self) -> dict[str, Any]:
        if self.task is Task.CLASSIFICATION:
            return {"class": self.class_name}
        if self.task is Task.DETECTION:
            return {"objects": [{"class": o.class_name, "box": list(o.box)} for o in self.objects]}
        return {}

    def to_kafka(self) -> KafkaRecord:
        headers: KafkaHeaders = [
            (LabelHeader.SCHEMA.value, LABELS_SCHEMA.encode()),
            (LabelHeader.DATASET.value, self.dataset.encode()),
            (LabelHeader.SAMPLE_ID.value, self.sample_id.encode()),
            (LabelHeader.TASK.value, self.task.value.encode()),
            (LabelHeader.ENCODING.value, self.encoding.value.encode()),
            (LabelHeader.ANNOTATION.value, json.dumps(self.annotation()).encode()),
        ]
        if self.classes:
            headers.append((LabelHeader.CLASSES.value, json.dumps(list(self.classes)).encode()))
        if self.mask is not None:
            headers.append((LabelHeader.MASK.value, self.mask))
        if self.source is not None:
            headers.append((LabelHeader.SOURCE.value, self.source.encode()))
        return KafkaRecord(key=self.key, value=self.image, headers=headers)

    @classmethod
    def from_kafka(
        cls, key: bytes | None, value: bytes | None, headers: Iterable[tuple[str, bytes | None]] | None
    ) -> LabeledSample:
        table = {name: raw for name, raw in (headers or [])}
        schema = _text(table, LabelHeader.SCHEMA)
        if schema != LABELS_SCHEMA:
            raise LabelError(f"unsupported label schema {schema!r}, expected {LABELS_SCHEMA!r}")
        dataset = check_dataset_name(_text(table, LabelHeader.DATASET))
        sample_id = _text(table, LabelHeader.SAMPLE_ID)
        if not 0 < len(sample_id) <= _SAMPLE_ID_MAX or not sample_id.isprintable():
            raise LabelError(f"sample id must be 1-{_SAMPLE_ID_MAX} printable characters")
        if key is not None and key != label_key(dataset, sample_id):
            raise LabelError(f"record key {key[:80]!r} is not {dataset}/{sample_id}")
        try:
            task = Task(_text(table, LabelHeader.TASK))
        except ValueError:
            raise LabelError(f"unknown task {table.get(LabelHeader.TASK.value)!r}") from None
        try:
            encoding = Encoding(_text(table, LabelHeader.ENCODING))
        except ValueError:
            raise LabelError("encoding must be jpeg or png", reason="unsupported_encoding") from None
        if encoding is Encoding.RAW:
            raise LabelError("labeled images must be jpeg or png", reason="unsupported_encoding")
        if not value:
            raise LabelError("record has no image bytes", reason="undecodable")
        classes: tuple[str, ...] = ()
        if LabelHeader.CLASSES.value in table:
            raw_classes = _json(table, LabelHeader.CLASSES)
            if not isinstance(raw_classes, list) or not all(isinstance(c, str) and c for c in raw_classes):
                raise LabelError("vlm-classes must be a JSON list of non-empty names", reason="bad_annotation")
            if len(set(raw_classes)) != len(raw_classes):
                raise LabelError("vlm-classes lists a name twice", reason="bad_annotation")
            classes = tuple(raw_classes)
        annotation = _json(table, LabelHeader.ANNOTATION)
        if not isinstance(annotation, dict):
            raise LabelError("vlm-annotation must be a JSON object", reason="bad_annotation")

        raw_source = table.get(LabelHeader.SOURCE.value)
        source = raw_source.decode("utf-8", "replace") if raw_source else None

        def labeled(**annotated: Any) -> LabeledSample:
            return cls(dataset, sample_id, task, value, encoding, classes, source=source, **annotated)

        if task is Task.CLASSIFICATION:
            name = annotation.get("class")
            if not isinstance(name, str) or not name:
                raise LabelError('classification labels need {"class": NAME}', reason="bad_annotation")
            return labeled(class_name=name)
        if task is Task.DETECTION:
            return labeled(objects=_objects(annotation))
        if len(classes) < 2:
            raise LabelError("segmentation labels need vlm-classes (background first)", reason="bad_annotation")
        mask = table.get(LabelHeader.MASK.value)
        if not mask:
            raise LabelError("segmentation labels need a vlm-mask PNG", reason="bad_annotation")
        return labeled(mask=mask)

    # -- pixels -----------------------------------------------------------------------
    def to_sample(self, class_names: Sequence[str]) -> Sample:
        """Decode into a Sample whose class indices refer to ``class_names``."""
        try:
            image = decode_image(self.image, self.encoding)
        except FrameError as exc:
            raise LabelError(f"image of {self.sample_id}: {exc}", reason="undecodable") from None
        index = {name: i for i, name in enumerate(class_names)}
        if self.task is Task.CLASSIFICATION:
            return Sample(image, label=_index(index, self.class_name or ""), source=self.sample_id)
        if self.task is Task.DETECTION:
            boxes = np.array([o.box for o in self.objects], np.float32).reshape(-1, 4)
            height, width = image.shape[:2]
            if len(boxes) and (boxes.min() < 0 or boxes[:, 2].max() > width or boxes[:, 3].max() > height):
                raise LabelError(f"a box of {self.sample_id} lies outside the {width}x{height} image", reason="bad_box")
            labels = np.array([_index(index, o.class_name) for o in self.objects], np.int64)
            return Sample(image, boxes=boxes, box_labels=labels, source=self.sample_id)
        mask = cv2.imdecode(np.frombuffer(self.mask or b"", np.uint8), cv2.IMREAD_UNCHANGED)
        if mask is None or mask.ndim != 2 or mask.dtype != np.uint8:
            raise LabelError(f"mask of {self.sample_id} is not an 8-bit single-channel PNG", reason="bad_mask")
        if mask.shape != image.shape[:2]:
            raise LabelError(f"mask of {self.sample_id} is {mask.shape}, image {image.shape[:2]}", reason="bad_mask")
        # Remap this message's class indices onto the snapshot's list.
        lookup = np.full(256, MASK_IGNORE, np.uint8)
        for i, name in enumerate(self.classes):
            lookup[i] = _index(index, name)
        valid = mask != MASK_IGNORE
        if valid.any() and int(mask[valid].max()) >= len(self.classes):
            raise LabelError(f"mask of {self.sample_id} has class {int(mask[valid].max())}", reason="bad_mask")
        return Sample(image, mask=lookup[mask], source=self.sample_id)


def check_dataset_name(name: str) -> str:
    if not _DATASET_NAME.match(name):
        raise LabelError(f"dataset name {name!r} must be 1-64 of letters, digits, '.', '_', '-'")
    return name


def label_key(dataset: str, sample_id: str) -> bytes:
    """The record key of a sample; a record with this key and a null value deletes it."""
    return f"{check_dataset_name(dataset)}/{sample_id}".encode()


def _png(mask: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(mask, dtype=np.uint8))
    if not ok:
        raise LabelError("OpenCV could not encode the mask as PNG", reason="bad_mask")
    return buf.tobytes()


def _objects(annotation: dict[str, Any]) -> tuple[LabeledObject, ...]:
    raw = annotation.get("objects")
    if not isinstance(raw, list):
        raise LabelError('detection labels need {"objects": [...]}', reason="bad_annotation")
    objects = []
    for item in raw:
        box = item.get("box") if isinstance(item, dict) else None
        name = item.get("class") if isinstance(item, dict) else None
        if (
            not isinstance(name, str)
            or not isinstance(box, list)
            or len(box) != 4
            or not all(isinstance(v, int | float) for v in box)
            or not (box[0] < box[2] and box[1] < box[3])
        ):
            raise LabelError(f"bad object {str(item)[:80]}: needs class and box [x1, y1, x2, y2]", reason="bad_box")
        objects.append(LabeledObject(name, (float(box[0]), float(box[1]), float(box[2]), float(box[3]))))
    return tuple(objects)


def _index(index: dict[str, int], name: str) -> int:
    if name not in index:
        raise LabelError(f"class {name!r} is not in the dataset's classes", reason="unknown_class")
    return index[name]


def _text(table: dict[str, bytes | None], header: LabelHeader) -> str:
    return header_text(table, header.value, LabelError)


def _json(table: dict[str, bytes | None], header: LabelHeader) -> Any:
    try:
        return strict_json(_text(table, header))
    except ValueError as exc:
        raise LabelError(f"header {header.value!r} is not JSON: {exc}", reason="bad_annotation") from None
