"""ImageFolder: ``root/<class name>/<image>`` for classification."""

from __future__ import annotations

from pathlib import Path

import cv2

from vlm_core.contracts.sample import Sample
from vlm_core.errors import DatasetError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


class ImageFolderDataset:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"image folder {self.root} does not exist")
        self.class_names = tuple(sorted(p.name for p in self.root.iterdir() if p.is_dir()))
        if not self.class_names:
            raise DatasetError(f"{self.root} has no class sub-folders", hint="lay it out as root/<class>/<image>")
        self.items: list[tuple[Path, int]] = [
            (path, label)
            for label, name in enumerate(self.class_names)
            for path in sorted((self.root / name).iterdir())
            if path.suffix.lower() in IMAGE_SUFFIXES
        ]
        if not self.items:
            raise DatasetError(f"{self.root} has class folders but no images ({sorted(IMAGE_SUFFIXES)})")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Sample:
        path, label = self.items[index]
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise DatasetError(f"cannot decode image {path}")
        return Sample(image=image, label=label, source=str(path))
