"""The segmentation profile's scorer (the others are in vlm_core.scoring)."""

import numpy as np
import pytest

from vlm_core.contracts.result import ClassMask, ModelRef, Segmentation
from vlm_core.contracts.rle import RLE
from vlm_core.contracts.sample import Sample
from vlm_core.tasks.segmentation import SegmentationScorer

REF = ModelRef("m", "1")
IMAGE = np.zeros((100, 100, 3), np.uint8)


def test_segmentation_miou_and_pixel_accuracy() -> None:
    truth = np.zeros((10, 10), np.uint8)
    truth[:, 5:] = 1
    predicted = np.zeros((10, 10), bool)
    predicted[:, 4:] = True  # one column too wide
    scorer = SegmentationScorer(2)
    scorer.add(Sample(IMAGE[:10, :10], mask=truth), Segmentation(REF, (ClassMask(1, "a", 0.6, RLE.encode(predicted)),)))
    metrics = scorer.metrics()
    assert metrics["pixel_accuracy"] == pytest.approx(0.9)
    assert metrics["miou"] == pytest.approx((40 / 50 + 50 / 60) / 2)
