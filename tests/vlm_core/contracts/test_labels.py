import json

import cv2
import numpy as np
import pytest

from vlm_core.contracts.frame import Encoding
from vlm_core.contracts.labels import LABELS_SCHEMA, LabeledSample, LabelHeader, label_key
from vlm_core.contracts.task import Task
from vlm_core.datasets import SCENE_CLASSES, SCENE_SEGMENTATION_CLASSES, Sample, SceneConfig, SceneGenerator
from vlm_core.errors import LabelError

CLASSES = ("cat", "dog")


def _image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8)


def _round_trip(labeled: LabeledSample) -> LabeledSample:
    record = labeled.to_kafka()
    return LabeledSample.from_kafka(record.key, record.value, record.headers)


def test_classification_round_trip_is_lossless_with_png() -> None:
    sample = Sample(_image(), label=1)
    labeled = LabeledSample.from_sample(
        sample, dataset="pets", sample_id="a/1.png", task=Task.CLASSIFICATION, class_names=CLASSES
    )
    parsed = _round_trip(labeled)
    assert parsed == labeled and parsed.key == b"pets/a/1.png"
    decoded = parsed.to_sample(("bird", "cat", "dog"))
    assert decoded.label == 2 and np.array_equal(decoded.image, sample.image)


def test_detection_and_segmentation_round_trip_on_scenes() -> None:
    scene = SceneGenerator(SceneConfig(width=96, height=80), seed=1).scene(0)
    det = _round_trip(
        LabeledSample.from_sample(scene, dataset="s", sample_id="0", task=Task.DETECTION, class_names=SCENE_CLASSES)
    ).to_sample(SCENE_CLASSES)
    assert np.allclose(det.boxes, scene.boxes) and det.box_labels.tolist() == scene.box_labels.tolist()
    seg = _round_trip(
        LabeledSample.from_sample(
            scene, dataset="s", sample_id="0", task=Task.SEGMENTATION, class_names=SCENE_SEGMENTATION_CLASSES
        )
    )
    # Another producer's class order: the mask is remapped onto it by name.
    order = (SCENE_SEGMENTATION_CLASSES[0], *reversed(SCENE_SEGMENTATION_CLASSES[1:]))
    remapped = seg.to_sample(order).mask
    names = np.array(SCENE_SEGMENTATION_CLASSES)[scene.mask]
    assert np.array_equal(np.array(order)[remapped], names)


def _headers(**overrides: bytes | None) -> list[tuple[str, bytes]]:
    headers = {
        LabelHeader.SCHEMA.value: LABELS_SCHEMA.encode(),
        LabelHeader.DATASET.value: b"pets",
        LabelHeader.SAMPLE_ID.value: b"1",
        LabelHeader.TASK.value: b"classification",
        LabelHeader.ENCODING.value: b"png",
        LabelHeader.ANNOTATION.value: b'{"class": "cat"}',
    }
    headers.update(overrides)
    return [(k, v) for k, v in headers.items() if v is not None]


PNG = cv2.imencode(".png", _image())[1].tobytes()


@pytest.mark.parametrize(
    ("overrides", "value", "reason", "message"),
    [
        ({LabelHeader.SCHEMA.value: b"vlm.labels/v0"}, PNG, "bad_header", "unsupported label schema"),
        ({LabelHeader.DATASET.value: b"no spaces"}, PNG, "bad_header", "dataset name"),
        ({LabelHeader.TASK.value: b"captioning"}, PNG, "bad_header", "unknown task"),
        ({LabelHeader.ENCODING.value: b"raw"}, PNG, "unsupported_encoding", "jpeg or png"),
        ({LabelHeader.ANNOTATION.value: b"{"}, PNG, "bad_annotation", "not JSON"),
        ({LabelHeader.ANNOTATION.value: b'{"label": 3}'}, PNG, "bad_annotation", '{"class": NAME}'),
        ({LabelHeader.CLASSES.value: b'["a", "a"]'}, PNG, "bad_annotation", "twice"),
        (
            {LabelHeader.TASK.value: b"detection", LabelHeader.ANNOTATION.value: b'{"objects": [{"class": "cat"}]}'},
            PNG,
            "bad_box",
            "needs class and box",
        ),
        (
            {LabelHeader.TASK.value: b"segmentation", LabelHeader.CLASSES.value: b'["background", "cat"]'},
            PNG,
            "bad_annotation",
            "vlm-mask",
        ),
        ({LabelHeader.SAMPLE_ID.value: None}, PNG, "bad_header", "missing header 'vlm-sample-id'"),
    ],
)
def test_contract_violations_raise_typed_errors(overrides: dict, value: bytes, reason: str, message: str) -> None:
    with pytest.raises(LabelError, match=message) as info:
        LabeledSample.from_kafka(b"pets/1", value, _headers(**overrides))
    assert info.value.reason == reason


def test_key_must_match_headers() -> None:
    with pytest.raises(LabelError, match="is not pets/1"):
        LabeledSample.from_kafka(b"pets/2", PNG, _headers())
    assert label_key("pets", "1") == b"pets/1"


def test_pixels_are_checked_on_decode() -> None:
    truncated = LabeledSample.from_kafka(b"pets/1", b"\x89PNG\r\n\x1a\n" + b"\0" * 10, _headers())
    with pytest.raises(LabelError) as info:
        truncated.to_sample(CLASSES)
    assert info.value.reason == "undecodable"
    with pytest.raises(LabelError) as info:
        LabeledSample.from_kafka(b"pets/1", PNG, _headers()).to_sample(("dog",))
    assert info.value.reason == "unknown_class"
    outside = json.dumps({"objects": [{"class": "cat", "box": [0, 0, 40, 10]}]}).encode()
    det = LabeledSample.from_kafka(
        b"pets/1", PNG, _headers(**{LabelHeader.TASK.value: b"detection", LabelHeader.ANNOTATION.value: outside})
    )
    with pytest.raises(LabelError, match="outside the 32x24 image"):
        det.to_sample(CLASSES)
    small_mask = cv2.imencode(".png", np.zeros((5, 5), np.uint8))[1].tobytes()
    seg = LabeledSample("pets", "1", Task.SEGMENTATION, PNG, Encoding.PNG, ("background", "cat"), mask=small_mask)
    with pytest.raises(LabelError) as info:
        seg.to_sample(("background", "cat"))
    assert info.value.reason == "bad_mask"
