from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from vlm_core.datasets import CocoDataset, ImageFolderDataset, VocSegmentationDataset, load_fashion_mnist
from vlm_core.errors import DatasetError

LABELME = Path("/usr/share/doc/labelme-examples/examples")
COCO_JSON = LABELME / "instance_segmentation" / "data_dataset_coco" / "annotations.json"
VOC_ROOT = LABELME / "semantic_segmentation" / "data_dataset_voc"


def test_imagefolder(tmp_path: Path) -> None:
    for cls, color in (("cat", 10), ("dog", 200)):
        (tmp_path / cls).mkdir()
        for i in range(3):
            cv2.imwrite(str(tmp_path / cls / f"{i}.png"), np.full((8, 8, 3), color, np.uint8))
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    ds = ImageFolderDataset(tmp_path)
    assert ds.class_names == ("cat", "dog")
    assert len(ds) == 6
    assert ds[0].label == 0 and ds[5].label == 1
    assert ds[5].image[0, 0, 0] == 200


def test_imagefolder_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError):
        ImageFolderDataset(tmp_path / "missing")
    with pytest.raises(DatasetError, match="no class"):
        ImageFolderDataset(tmp_path)
    (tmp_path / "a").mkdir()
    with pytest.raises(DatasetError, match="no images"):
        ImageFolderDataset(tmp_path)


def test_coco_labelme_examples() -> None:
    assert COCO_JSON.is_file(), "Debian labelme-examples must be installed by the bootstrap"
    ds = CocoDataset(COCO_JSON)
    assert len(ds) == 3
    assert "person" in ds.class_names and "_background_" not in ds.class_names
    sample = ds[0]
    height, width = sample.image.shape[:2]
    assert sample.boxes.shape[1] == 4 and len(sample.boxes) == len(sample.box_labels) > 0
    assert sample.instance_masks is not None and sample.instance_masks.shape == (len(sample.boxes), height, width)
    for box, mask in zip(sample.boxes, sample.instance_masks, strict=True):
        ys, xs = np.nonzero(mask)
        # The polygon's raster lies inside its COCO box (to a pixel of rounding).
        assert xs.min() >= box[0] - 1 and xs.max() <= box[2] + 1
        assert ys.min() >= box[1] - 1 and ys.max() <= box[3] + 1
    assert sample.mask is not None and set(np.unique(sample.mask)) <= set(range(len(ds.class_names) + 1))


def test_coco_rle_annotation(tmp_path: Path) -> None:
    from pycocotools import mask as mask_utils

    image = np.zeros((20, 30, 3), np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), image)
    m = np.zeros((20, 30), np.uint8)
    m[2:6, 3:9] = 1
    rle = mask_utils.encode(np.asfortranarray(m))
    rle["counts"] = rle["counts"].decode()
    doc = {
        "images": [{"id": 5, "file_name": "a.png", "width": 30, "height": 20}],
        "categories": [{"id": 3, "name": "thing"}],
        "annotations": [
            {"id": 1, "image_id": 5, "category_id": 3, "bbox": [3, 2, 6, 4], "segmentation": rle, "iscrowd": 0},
            {"id": 2, "image_id": 5, "category_id": 3, "bbox": [0, 0, 1, 1], "iscrowd": 1},
        ],
    }
    import json

    (tmp_path / "ann.json").write_text(json.dumps(doc))
    sample = CocoDataset(tmp_path / "ann.json")[0]
    assert sample.boxes.tolist() == [[3, 2, 9, 6]]
    assert sample.instance_masks is not None and sample.instance_masks[0].sum() == 24


def test_coco_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        CocoDataset(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(DatasetError, match="not JSON"):
        CocoDataset(tmp_path / "bad.json")
    (tmp_path / "partial.json").write_text('{"images": []}')
    with pytest.raises(DatasetError, match="annotations"):
        CocoDataset(tmp_path / "partial.json")


def test_voc_class_masks() -> None:
    ds = VocSegmentationDataset(VOC_ROOT)
    assert ds.class_names[0] == "_background_" and "person" in ds.class_names
    assert len(ds) == 3
    sample = ds[0]
    assert sample.mask is not None and sample.mask.shape == sample.image.shape[:2]
    present = set(np.unique(sample.mask).tolist()) - {255}
    assert 0 in present and len(present) >= 2
    assert max(present) < len(ds.class_names)


def test_voc_rejects_rgb_masks(tmp_path: Path) -> None:
    (tmp_path / "JPEGImages").mkdir()
    (tmp_path / "SegmentationClassPNG").mkdir()
    cv2.imwrite(str(tmp_path / "JPEGImages" / "x.jpg"), np.zeros((4, 4, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "SegmentationClassPNG" / "x.png"), np.zeros((4, 4, 3), np.uint8))
    ds = VocSegmentationDataset(tmp_path, class_names=("background", "a"))
    with pytest.raises(DatasetError, match="palette"):
        ds[0]


def test_fashion_mnist_real_files() -> None:
    train = load_fashion_mnist("train")
    test = load_fashion_mnist("test")
    assert train.images.shape == (60000, 28, 28) and len(test) == 10000
    assert set(np.unique(test.labels).tolist()) == set(range(10))
    with pytest.raises(DatasetError):
        load_fashion_mnist("validation")
