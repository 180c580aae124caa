"""COCO JSON: boxes plus polygon or RLE instance masks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from vlm_core.contracts.sample import Sample
from vlm_core.errors import DatasetError

_BACKGROUND_NAMES = {"_background_", "__background__", "background"}


class CocoDataset:
    """Reads a COCO ``instances`` file. Category ids map to contiguous indices in
    ``class_names`` (background categories dropped); crowd annotations are skipped."""

    def __init__(self, annotations: str | Path, image_root: str | Path | None = None) -> None:
        self.annotations_path = Path(annotations)
        try:
            doc = json.loads(self.annotations_path.read_text())
        except FileNotFoundError:
            raise DatasetError(f"COCO annotation file {self.annotations_path} does not exist") from None
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{self.annotations_path} is not JSON: {exc}") from None
        for key in ("images", "annotations", "categories"):
            if key not in doc:
                raise DatasetError(f"{self.annotations_path} is not COCO: missing {key!r}")
        self.image_root = Path(image_root) if image_root else self.annotations_path.parent
        categories = sorted((c for c in doc["categories"] if c["name"] not in _BACKGROUND_NAMES), key=lambda c: c["id"])
        self.class_names = tuple(c["name"] for c in categories)
        self._category_index = {c["id"]: i for i, c in enumerate(categories)}
        self.images: list[dict[str, Any]] = sorted(doc["images"], key=lambda im: im["id"])
        self._by_image: dict[int, list[dict[str, Any]]] = {im["id"]: [] for im in self.images}
        for ann in doc["annotations"]:
            if ann.get("iscrowd", 0) or ann["category_id"] not in self._category_index:
                continue
            if ann["image_id"] not in self._by_image:
                raise DatasetError(f"annotation {ann.get('id')} refers to unknown image {ann['image_id']}")
            self._by_image[ann["image_id"]].append(ann)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Sample:
        info = self.images[index]
        path = self.image_root / info["file_name"]
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise DatasetError(f"cannot read image {path}")
        height, width = image.shape[:2]
        anns = self._by_image[info["id"]]
        boxes = np.array(
            [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in anns],
            dtype=np.float32,
        ).reshape(-1, 4)
        labels = np.array([self._category_index[a["category_id"]] for a in anns], dtype=np.int64)
        masks = np.stack([self._mask(a, height, width) for a in anns]) if anns else np.zeros((0, height, width), bool)
        semantic = np.zeros((height, width), np.uint8)
        for label, instance in zip(labels, masks, strict=True):
            semantic[instance] = label + 1
        return Sample(image, None, boxes, labels, semantic, masks, str(path))

    @staticmethod
    def _mask(ann: dict[str, Any], height: int, width: int) -> np.ndarray:
        seg = ann.get("segmentation")
        if not seg:
            x, y, w, h = ann["bbox"]
            mask = np.zeros((height, width), bool)
            mask[int(y) : int(np.ceil(y + h)), int(x) : int(np.ceil(x + w))] = True
            return mask
        if isinstance(seg, list):
            rle = mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
        elif isinstance(seg.get("counts"), list):
            rle = mask_utils.frPyObjects(seg, height, width)
        else:
            rle = seg
        return mask_utils.decode(rle).astype(bool)
