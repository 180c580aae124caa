"""Fashion-MNIST from its IDX files (Debian ``dataset-fashion-mnist`` by default)."""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from vlm_core.errors import DatasetError

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"


def fashion_mnist_dir() -> Path:
    return Path(os.environ.get("VLM_FASHION_MNIST_DIR", DEFAULT_DIR))


@dataclass(frozen=True)
class FashionMnist:
    images: np.ndarray = field(repr=False)  # N x 28 x 28 uint8, item bright on black
    labels: np.ndarray = field(repr=False)  # N int64
    class_names: tuple[str, ...] = FASHION_MNIST_CLASSES

    def __len__(self) -> int:
        return len(self.labels)


@lru_cache(maxsize=2)
def load_fashion_mnist(split: str = "train", root: str | None = None) -> FashionMnist:
    if split not in ("train", "test"):
        raise DatasetError(f"Fashion-MNIST split must be 'train' or 'test', got {split!r}")
    base = Path(root) if root else fashion_mnist_dir()
    prefix = "train" if split == "train" else "t10k"
    images = _read_idx(base / f"{prefix}-images-idx3-ubyte.gz", base)
    labels = _read_idx(base / f"{prefix}-labels-idx1-ubyte.gz", base).astype(np.int64)
    if len(images) != len(labels):
        raise DatasetError(f"Fashion-MNIST {split}: {len(images)} images but {len(labels)} labels")
    return FashionMnist(images, labels)


def _read_idx(path: Path, base: Path) -> np.ndarray:
    if not path.is_file():
        raise DatasetError(
            f"Fashion-MNIST file {path} is missing",
            hint=f"install Debian's dataset-fashion-mnist or set VLM_FASHION_MNIST_DIR (looked in {base})",
        )
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    magic, ndim = struct.unpack(">HxB", data[:4])[0], data[3]
    if magic != 0:
        raise DatasetError(f"{path} is not an IDX file")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)
