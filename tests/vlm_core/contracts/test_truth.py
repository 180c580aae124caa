from __future__ import annotations

import numpy as np
import pytest

from vlm_core.contracts.frame import Frame
from vlm_core.contracts.truth import TRUTH_HEADER, FrameTruth, TruthObject
from vlm_core.errors import FrameHeaderError

TRUTH = FrameTruth("clutter", (TruthObject((1.0, 2.0, 30.5, 40.0), "Bag"), TruthObject((5, 5, 9, 9), "Coat")))


def test_truth_rides_with_the_frame_through_kafka_records() -> None:
    frame = Frame.from_image(np.zeros((48, 64, 3), np.uint8), camera_id="c", seq=3, truth=TRUTH)
    record = frame.to_kafka()
    assert [name for name, _ in record.headers].count(TRUTH_HEADER) == 1
    back = Frame.from_kafka(*record.fields())
    assert back.truth == TRUTH
    plain = Frame.from_kafka(*Frame.from_image(np.zeros((8, 8, 3), np.uint8), camera_id="c", seq=1).to_kafka().fields())
    assert plain.truth is None


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b'{"schema": "vlm.truth/v9", "domain": "x", "objects": []}',
        b'{"schema": "vlm.truth/v1", "objects": []}',
        b'{"schema": "vlm.truth/v1", "domain": "x", "objects": [{"box": [1, 2, 3], "label": "a"}]}',
        b'{"schema": "vlm.truth/v1", "domain": "x", "objects": [{"box": "abcd", "label": "a"}]}',
        b"[]",
        b"x" * 70_000,
    ],
)
def test_a_malformed_truth_header_is_a_typed_header_error(raw: bytes) -> None:
    with pytest.raises(FrameHeaderError):
        FrameTruth.from_header(raw)


def test_truth_scales_with_the_frame() -> None:
    half = TRUTH.scaled(0.5)
    assert half.objects[0].box == (0.5, 1.0, 15.25, 20.0) and half.domain == "clutter"
