"""VOC-style semantic segmentation: ``JPEGImages/*.jpg`` + palette ``SegmentationClassPNG/*.png``."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from vlm_core.contracts.sample import MASK_IGNORE, Sample
from vlm_core.errors import DatasetError


class VocSegmentationDataset:
    """Class-mask PNGs hold palette indices: 0 background, k = ``class_names[k]``, 255 ignore."""

    def __init__(
        self,
        root: str | Path,
        *,
        mask_dir: str = "SegmentationClassPNG",
        image_dir: str = "JPEGImages",
        class_names: tuple[str, ...] | None = None,
    ) -> None:
        self.root = Path(root)
        self.mask_dir = self.root / mask_dir
        if not self.mask_dir.is_dir():
            alt = self.root / "SegmentationClass"
            if alt.is_dir() and any(alt.glob("*.png")):
                self.mask_dir = alt
            else:
                raise DatasetError(f"{self.root} has no {mask_dir}/ folder of class-mask PNGs")
        self.image_dir = self.root / image_dir
        names_file = self.root / "class_names.txt"
        if class_names is None:
            if not names_file.is_file():
                raise DatasetError(f"{names_file} is missing; pass class_names explicitly")
            class_names = tuple(line.strip() for line in names_file.read_text().splitlines() if line.strip())
        self.class_names = class_names
        self.items = sorted(self.mask_dir.glob("*.png"))
        if not self.items:
            raise DatasetError(f"{self.mask_dir} has no PNG masks")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Sample:
        mask_path = self.items[index]
        image_path = next(
            (p for p in (self.image_dir / (mask_path.stem + ext) for ext in (".jpg", ".jpeg", ".png")) if p.is_file()),
            None,
        )
        if image_path is None:
            raise DatasetError(f"no image in {self.image_dir} for mask {mask_path.name}")
        image = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
        if image is None:
            raise DatasetError(f"cannot read image {image_path}")
        with Image.open(mask_path) as pil:
            if pil.mode not in ("P", "L"):
                raise DatasetError(f"{mask_path} is a {pil.mode} image; class masks must be palette or grey PNGs")
            mask = np.array(pil, dtype=np.uint8)
        if mask.shape != image.shape[:2]:
            raise DatasetError(f"mask {mask_path.name} is {mask.shape}, image is {image.shape[:2]}")
        valid = mask != MASK_IGNORE
        if valid.any() and int(mask[valid].max()) >= len(self.class_names):
            raise DatasetError(f"mask {mask_path.name} has class {int(mask[valid].max())} >= {len(self.class_names)}")
        return Sample(image=image, mask=mask, source=str(image_path))
