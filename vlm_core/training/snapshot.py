"""Materialise the ``vlm.labels`` records of one dataset into a snapshot with a content hash.

The latest record per sample wins and tombstones delete, as log compaction would; the
class list is the latest one declared (``vlm-classes``), else the sorted names in use. The
hash covers the class list and every live sample's id, image, annotation and mask, in id
order, so the same content gives the same hash however it arrived, and the snapshot
directory is named by it: materialising unchanged labels again reuses it.
Records that break the contract are skipped and counted by reason; the rest are kept.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2

from vlm_core.contracts.frame import Encoding
from vlm_core.contracts.labels import LabeledSample, check_dataset_name
from vlm_core.contracts.snapshot import SAMPLES, SnapshotManifest, is_snapshot
from vlm_core.contracts.task import Task
from vlm_core.errors import DatasetError, LabelError

#: (key, value, headers) of one Kafka record.
LabelRecord = tuple[bytes | None, bytes | None, Any]


@dataclass(frozen=True)
class Snapshot:
    path: Path
    dataset: str
    task: Task
    content_hash: str
    samples: int
    class_names: tuple[str, ...]
    skipped: dict[str, int] = field(default_factory=dict)
    reused: bool = False

    def describe(self) -> str:
        skipped = ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped.items())) or "none"
        state = "unchanged, reused" if self.reused else "written"
        return (
            f"snapshot {self.dataset}@{self.content_hash[:12]}: {self.samples} {self.task.value} samples, "
            f"{len(self.class_names)} classes, skipped: {skipped} ({state} {self.path})"
        )


def materialise(
    records: Iterable[LabelRecord],
    *,
    dataset: str,
    task: Task,
    root: Path,
    source: dict[str, Any] | None = None,
) -> Snapshot:
    check_dataset_name(dataset)
    prefix = f"{dataset}/".encode()
    latest: dict[str, LabeledSample | None] = {}
    declared: tuple[str, ...] = ()
    skipped: Counter[str] = Counter()
    for key, value, headers in records:
        if key is None or not key.startswith(prefix):
            continue  # another dataset's (or unkeyed) record
        if not value:
            latest[key[len(prefix) :].decode("utf-8", "replace")] = None
            continue
        try:
            labeled = LabeledSample.from_kafka(key, value, headers)
        except LabelError as exc:
            skipped[exc.reason] += 1
            continue
        if labeled.task is not task:
            skipped["wrong_task"] += 1
            continue
        latest[labeled.sample_id] = labeled
        declared = labeled.classes or declared
    live = {sid: s for sid, s in sorted(latest.items()) if s is not None}
    class_names = declared or _names_in_use(live.values(), task)
    samples = []
    for sample_id, labeled in live.items():
        try:
            samples.append((sample_id, labeled, labeled.to_sample(class_names)))
        except LabelError as exc:
            skipped[exc.reason] += 1
    if not samples:
        raise DatasetError(
            f"no valid {task.value} samples for dataset {dataset!r} on the labels topic",
            hint="send some with `vlm label push DIR --dataset NAME --task TASK`",
        )
    digest = _content_hash(class_names, [labeled for _, labeled, _ in samples])
    target = root / dataset / digest[:16]
    if is_snapshot(target):  # the same content, already written
        return Snapshot(target, dataset, task, digest, len(samples), class_names, dict(skipped), reused=True)
    root.joinpath(dataset).mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=root / dataset))
    try:
        _write(staging, samples, task)
        SnapshotManifest(
            dataset=dataset,
            task=task.value,
            content_hash=digest,
            class_names=class_names,
            samples=len(samples),
            skipped=dict(skipped),
            source=source or {},
            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        ).write(staging)
        try:
            os.rename(staging, target)  # atomic: readers see no snapshot or a whole one
        except OSError:
            if not is_snapshot(target):  # not a concurrent writer of the same content
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Snapshot(target, dataset, task, digest, len(samples), class_names, dict(skipped))


def _names_in_use(samples: Iterable[LabeledSample], task: Task) -> tuple[str, ...]:
    items = list(samples)
    if task is Task.CLASSIFICATION:
        return tuple(sorted({s.class_name or "" for s in items}))
    return tuple(sorted({o.class_name for s in items for o in s.objects}))


def _content_hash(class_names: tuple[str, ...], samples: list[LabeledSample]) -> str:
    digest = hashlib.sha256(json.dumps(list(class_names)).encode())
    for labeled in samples:
        digest.update(labeled.sample_id.encode() + b"\0")
        digest.update(hashlib.sha256(labeled.image).digest())
        digest.update(json.dumps(labeled.annotation(), sort_keys=True).encode())
        digest.update(hashlib.sha256(labeled.mask or b"").digest())
        digest.update(json.dumps(list(labeled.classes)).encode())
    return digest.hexdigest()


def _write(directory: Path, samples: list[tuple[str, LabeledSample, Any]], task: Task) -> None:
    (directory / "images").mkdir()
    if task is Task.SEGMENTATION:
        (directory / "masks").mkdir()
    with (directory / SAMPLES).open("w") as lines:
        for n, (sample_id, labeled, sample) in enumerate(samples):
            image = f"images/{n:06d}.{'jpg' if labeled.encoding is Encoding.JPEG else 'png'}"
            (directory / image).write_bytes(labeled.image)
            item: dict[str, Any] = {"id": sample_id, "image": image}
            if task is Task.CLASSIFICATION:
                item["label"] = sample.label
            elif task is Task.DETECTION:
                item["boxes"] = sample.boxes.tolist()
                item["labels"] = sample.box_labels.tolist()
            else:
                item["mask"] = f"masks/{n:06d}.png"
                if not cv2.imwrite(str(directory / item["mask"]), sample.mask):
                    raise DatasetError(f"cannot write {directory / item['mask']}")
            lines.write(json.dumps(item) + "\n")
