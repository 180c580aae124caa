from __future__ import annotations

import json

import numpy as np
import pytest

from vlm_core.contracts.result import (
    RESULT_SCHEMA_VERSION,
    Classification,
    ClassMask,
    ClassScore,
    Detection,
    Detections,
    ModelRef,
    Result,
    Segmentation,
    result_json_schema,
    validate_result,
)
from vlm_core.contracts.rle import RLE, polygons_to_mask
from vlm_core.contracts.task import Task
from vlm_core.errors import ResultError


def full_result() -> Result:
    mask = np.zeros((40, 60), bool)
    mask[5:20, 10:30] = True
    return Result(
        camera_id="cam-1",
        seq=12,
        capture_ts_ms=1_000,
        processed_ts_ms=1_040,
        width=60,
        height=40,
        outputs={
            Task.CLASSIFICATION: Classification(
                ModelRef("cls", "3"), (ClassScore("cat", 1, 0.9), ClassScore("dog", 0, 0.1))
            ),
            Task.DETECTION: Detections(ModelRef("det", "1"), (Detection((1.0, 2.0, 30.5, 39.0), "bag", 8, 0.77),)),
            Task.SEGMENTATION: Segmentation(
                ModelRef("seg", "2"), (ClassMask(4, "coat", mask.mean(), RLE.encode(mask)),)
            ),
        },
        timing_ms={"decode": 1.5, "classification": 3.25, "total": 40.0},
        partition=2,
        offset=77,
    )


def test_roundtrip_through_json_and_schema() -> None:
    result = full_result()
    doc = result.to_json()
    validate_result(doc)
    assert doc["schema"] == RESULT_SCHEMA_VERSION
    back = Result.from_bytes(result.to_bytes())
    assert back == result
    assert back.latency_ms == 40
    assert back.classification is not None and back.classification.top == ClassScore("cat", 1, 0.9)


def test_finer_digits_than_the_wire_carries_are_rounded_once() -> None:
    precise = Result(
        "c",
        0,
        1,
        2,
        60,
        40,
        outputs={
            Task.DETECTION: Detections(
                ModelRef("det", "1"), (Detection((0.125, 2.0, 30.5, 39.0), "bag", 8, 0.1234567),)
            )
        },
        timing_ms={"total": 1.23456},
    )
    read = Result.from_bytes(precise.to_bytes())
    assert read.detection is not None
    assert read.detection.detections[0].box == (0.12, 2.0, 30.5, 39.0)  # to 1/100 px, half to even
    assert read.detection.detections[0].score == 0.123457
    assert read.timing_ms == {"total": 1.235}
    assert read.to_bytes() == precise.to_bytes()


def test_mask_survives_roundtrip() -> None:
    result = full_result()
    back = Result.from_bytes(result.to_bytes())
    assert back.segmentation is not None
    decoded = back.segmentation.classes[0].mask.decode()
    assert decoded.shape == (40, 60)
    assert decoded[5:20, 10:30].all() and decoded.sum() == 15 * 20


def test_tasks_are_optional() -> None:
    result = Result("c", 0, 1, 2, 10, 10)
    validate_result(result.to_json())
    assert Result.from_json(result.to_json()) == result


@pytest.mark.parametrize(
    ("mutate", "where"),
    [
        (lambda d: d.update(schema="vlm.result/v0"), "schema"),
        (lambda d: d.pop("camera_id"), "<root>"),
        (lambda d: d["tasks"]["detection"]["detections"][0].update(box=[1, 2, 3]), "box"),
        (lambda d: d["tasks"]["classification"]["top_k"][0].update(score=1.5), "score"),
        (lambda d: d.update(unexpected=1), "<root>"),
        (lambda d: d["tasks"]["segmentation"]["classes"][0]["mask"].pop("counts"), "mask"),
    ],
)
def test_schema_violations_are_typed(mutate, where: str) -> None:  # type: ignore[no-untyped-def]
    doc = full_result().to_json()
    mutate(doc)
    with pytest.raises(ResultError, match=where):
        Result.from_json(doc)


def test_not_json() -> None:
    with pytest.raises(ResultError):
        Result.from_bytes(b"\x00garbage")
    with pytest.raises(ResultError):
        Result.from_bytes(b"[1, 2]")


def test_schema_file_is_shipped_and_valid() -> None:
    import jsonschema

    schema = result_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["properties"]["schema"]["const"] == RESULT_SCHEMA_VERSION


def test_rle_is_coco_compatible() -> None:
    from pycocotools import mask as mask_utils

    mask = np.zeros((7, 9), bool)
    mask[1:4, 2:8] = True
    rle = RLE.encode(mask)
    assert rle.area() == 18
    theirs = mask_utils.decode({"size": [7, 9], "counts": rle.counts.encode()})
    assert np.array_equal(theirs.astype(bool), mask)
    assert json.loads(json.dumps(rle.to_json())) == {"size": [7, 9], "counts": rle.counts}


def test_polygons_to_mask() -> None:
    mask = polygons_to_mask([[0, 0, 10, 0, 10, 10, 0, 10]], 20, 20)
    assert 90 <= mask.sum() <= 121
    assert not mask[15:, 15:].any()


def test_schema_caps_seq_at_int64() -> None:
    import json

    import pytest

    from vlm_core.contracts.result import Result, validate_result
    from vlm_core.errors import ResultError

    doc = json.loads(Result("c", 2**63 - 1, 1, 2, 4, 4).to_bytes())
    validate_result(doc)
    with pytest.raises(ResultError, match="seq"):
        validate_result({**doc, "seq": 2**63})


def test_v2_carries_track_ids_and_the_tracking_section() -> None:
    from dataclasses import replace

    from vlm_core.contracts.result import TrackingInfo

    result = full_result()
    detections = result.detection
    assert detections is not None
    tracked = Detections(detections.model, (replace(detections.detections[0], track_id=7),))
    result = replace(result, outputs={**result.outputs, Task.DETECTION: tracked}, tracking=TrackingInfo("bytetrack", 3))
    doc = json.loads(result.to_bytes())
    assert doc["schema"] == "vlm.result/v2" and doc["tracking"]["active_tracks"] == 3
    assert doc["tasks"]["detection"]["detections"][0]["track_id"] == 7
    assert Result.from_json(doc) == result


def test_v1_documents_are_still_read_as_untracked() -> None:
    doc = full_result().to_json()
    doc["schema"] = "vlm.result/v1"
    doc.pop("tracking")
    for det in doc["tasks"]["detection"]["detections"]:
        det.pop("track_id")
    back = Result.from_json(doc)
    assert back.tracking is None and back.detection is not None
    assert [d.track_id for d in back.detection.detections] == [None]
    with pytest.raises(ResultError, match=r"vlm\.result/v1"):
        Result.from_json({**doc, "tracking": None})  # v1 has no tracking section


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_a_result_with_a_non_finite_number_is_refused(number: str) -> None:
    data = full_result().to_bytes().replace(b'"score":0.9', b'"score":' + number.encode(), 1)
    assert data != full_result().to_bytes()
    with pytest.raises(ResultError, match="not JSON"):
        Result.from_bytes(data)
