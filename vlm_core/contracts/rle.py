"""COCO run-length encoding of binary masks (pycocotools' compressed string form)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pycocotools import mask as mask_utils


@dataclass(frozen=True)
class RLE:
    height: int
    width: int
    counts: str

    @classmethod
    def encode(cls, mask: np.ndarray) -> RLE:
        binary = np.asfortranarray(mask.astype(np.uint8))
        rle = mask_utils.encode(binary)
        height, width = (int(v) for v in rle["size"])
        return cls(height, width, rle["counts"].decode("ascii"))

    def decode(self) -> np.ndarray:
        return mask_utils.decode({"size": [self.height, self.width], "counts": self.counts.encode("ascii")}).astype(
            bool
        )

    def area(self) -> int:
        return int(mask_utils.area({"size": [self.height, self.width], "counts": self.counts.encode("ascii")}))

    def to_json(self) -> dict[str, object]:
        return {"size": [self.height, self.width], "counts": self.counts}

    @classmethod
    def from_json(cls, doc: dict[str, object]) -> RLE:
        size = doc["size"]
        if not isinstance(size, (list, tuple)) or len(size) != 2:
            raise ValueError(f"RLE size must be [height, width], got {size!r}")
        return cls(int(size[0]), int(size[1]), str(doc["counts"]))


def polygons_to_mask(polygons: list[list[float]], height: int, width: int) -> np.ndarray:
    """Rasterise COCO polygons into a boolean mask."""
    rles = mask_utils.frPyObjects(polygons, height, width)
    return mask_utils.decode(mask_utils.merge(rles)).astype(bool)
