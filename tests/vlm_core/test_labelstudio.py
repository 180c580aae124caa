from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from vlm_core import labelstudio as ls
from vlm_core.contracts.dlq import FrameRef
from vlm_core.contracts.frame import Encoding
from vlm_core.contracts.task import Task
from vlm_core.contracts.to_label import ToLabel
from vlm_core.errors import ConfigError, LabelError

CLASSES = ("Bag", 'Odd "<name>" & co')


def sample(task: Task = Task.DETECTION) -> ToLabel:
    prediction = {
        "detection": {
            "model": {"name": "det", "version": "3"},
            "detections": [
                {"box": [32.0, 48.0, 128.0, 144.0], "label": "Bag", "class_id": 0, "score": 0.3, "track_id": 4},
                {"box": [0.0, 0.0, 10.0, 10.0], "label": "Bag", "class_id": 0, "score": 0.05, "track_id": None},
            ],
        },
        "classification": {
            "model": {"name": "cls", "version": "1"},
            "top_k": [{"label": "Bag", "class_id": 0, "score": 0.2}],
        },
    }
    return ToLabel(
        "cam", 7, 1, FrameRef("vlm.frames", 0, 5), {task.value: 0.3}, {task.value: "m@3"},
        {task.value: prediction[task.value]}, (320, 240),
    )  # fmt: skip


@pytest.mark.parametrize(("task", "control"), [(Task.DETECTION, "RectangleLabels"), (Task.CLASSIFICATION, "Choices")])
def test_label_config_is_valid_xml_with_every_class(task: Task, control: str) -> None:
    root = ET.fromstring(ls.label_config(task, CLASSES))
    node = root.find(control)
    assert node is not None and node.get("toName") == "image"
    assert [c.get("value") for c in node] == list(CLASSES)


def test_segmentation_and_empty_classes_are_refused() -> None:
    with pytest.raises(ConfigError, match="not supported"):
        ls.label_config(Task.SEGMENTATION, CLASSES)
    with pytest.raises(ConfigError, match="at least one class"):
        ls.label_config(Task.DETECTION, ())


def test_a_prediction_becomes_percent_boxes_above_the_min_score() -> None:
    predicted = ls.prediction(sample(), Task.DETECTION, min_score=0.1)
    assert predicted is not None and predicted["model_version"] == "m@3"
    (region,) = predicted["result"]
    value = region["value"]
    assert [value[k] for k in ("x", "y", "width", "height")] == pytest.approx([10.0, 20.0, 30.0, 40.0])
    assert value["rectanglelabels"] == ["Bag"]
    classified = ls.prediction(sample(Task.CLASSIFICATION), Task.CLASSIFICATION)
    assert classified is not None and classified["result"][0]["value"] == {"choices": ["Bag"]}
    v1 = ToLabel("cam", 7, 1, FrameRef("vlm.frames", 0, 5), {"detection": 0.3})
    assert ls.prediction(v1, Task.DETECTION) is None


def test_an_annotation_round_trips_to_a_labeled_sample_in_pixels() -> None:
    data = ls.task_data(sample(), b"\xff\xd8jpeg", Encoding.JPEG)
    predicted = ls.prediction(sample(), Task.DETECTION, min_score=0.1)
    assert predicted is not None
    region = dict(predicted["result"][0], value={**predicted["result"][0]["value"], "rectanglelabels": [CLASSES[1]]})
    done = ls.completed(
        11, [{"id": 1, "updated_at": "a", "result": []}, {"id": 2, "updated_at": "b", "result": [region]}]
    )
    assert done is not None and done.annotation_id == 2
    labeled = ls.labeled_sample(done, data, project_id=3, dataset="d", task=Task.DETECTION, class_names=CLASSES)
    assert labeled.sample_id == "cam-7" and labeled.image == b"\xff\xd8jpeg" and labeled.encoding is Encoding.JPEG
    assert labeled.objects[0].class_name == CLASSES[1]
    assert labeled.objects[0].box == pytest.approx((32.0, 48.0, 128.0, 144.0))
    assert labeled.source == "labelstudio:3/11/2@b"
    assert labeled.to_kafka().key == b"d/cam-7"


def test_cancelled_annotations_do_not_count_and_unknown_classes_are_refused() -> None:
    assert ls.completed(1, [{"id": 1, "was_cancelled": True, "result": []}]) is None
    done = ls.completed(1, [{"id": 5, "result": [{"type": "choices", "value": {"choices": ["Nope"]}}]}])
    assert done is not None
    data = ls.task_data(sample(Task.CLASSIFICATION), b"\x89PNG", Encoding.PNG)
    with pytest.raises(LabelError, match="one known class"):
        ls.labeled_sample(done, data, project_id=1, dataset="d", task=Task.CLASSIFICATION, class_names=CLASSES)
    with pytest.raises(LabelError, match="vlm_ref"):
        ls.labeled_sample(
            done, {"image": data["image"]}, project_id=1, dataset="d", task=Task.CLASSIFICATION, class_names=CLASSES
        )
    with pytest.raises(LabelError, match="data URI"):
        ls.image_from_data_uri("https://example.invalid/x.jpg")


def test_the_truth_annotation_is_what_the_sync_reads_back_as_the_true_boxes() -> None:
    from vlm_core.contracts.truth import FrameTruth, TruthObject

    truth = FrameTruth("clutter", (TruthObject((32.0, 48.0, 128.0, 144.0), "Bag"), TruthObject((0, 0, 5, 9), "Bag")))
    result = ls.truth_annotation(truth, Task.DETECTION, 320, 240)
    assert result is not None
    done = ls.completed(11, [{"id": 4, "updated_at": "t", "result": result}])
    assert done is not None
    data = ls.task_data(sample(), b"\xff\xd8jpeg", Encoding.JPEG)
    labeled = ls.labeled_sample(done, data, project_id=3, dataset="d", task=Task.DETECTION, class_names=CLASSES)
    assert [o.box for o in labeled.objects] == [pytest.approx(o.box) for o in truth.objects]
    one = FrameTruth("base", truth.objects[:1])
    assert ls.truth_annotation(one, Task.CLASSIFICATION, 320, 240) == [ls.choice("Bag")]
    assert ls.truth_annotation(truth, Task.CLASSIFICATION, 320, 240) is None  # two objects: no single class
