"""A materialised label snapshot: ``snapshot.json`` + ``samples.jsonl`` + image and mask files.

Written by :func:`vlm_core.training.snapshot.materialise` from the ``vlm.labels`` topic;
read here like any other dataset. Class indices refer to ``snapshot.json``'s ``class_names``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from vlm_core.contracts.sample import Sample
from vlm_core.contracts.snapshot import SAMPLES, SnapshotManifest
from vlm_core.errors import DatasetError


class SnapshotDataset:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.manifest = SnapshotManifest.read(self.root)
        self.class_names: tuple[str, ...] = self.manifest.class_names
        self.content_hash: str = self.manifest.content_hash
        with (self.root / SAMPLES).open() as lines:
            self.items: list[dict[str, Any]] = [json.loads(line) for line in lines if line.strip()]
        self.sample_ids = [item["id"] for item in self.items]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Sample:
        item = self.items[index]
        path = self.root / item["image"]
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise DatasetError(f"cannot read snapshot image {path}")
        if "label" in item:
            return Sample(image, label=int(item["label"]), source=item["id"])
        if "boxes" in item:
            boxes = np.array(item["boxes"], np.float32).reshape(-1, 4)
            return Sample(image, boxes=boxes, box_labels=np.array(item["labels"], np.int64), source=item["id"])
        mask = cv2.imread(str(self.root / item["mask"]), cv2.IMREAD_UNCHANGED)
        if mask is None:
            raise DatasetError(f"cannot read snapshot mask {self.root / item['mask']}")
        return Sample(image, mask=mask, source=item["id"])
