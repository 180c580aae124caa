import pytest

from services.trainer.job import TrainRequest, default_model_name, init_weights
from vlm_core.contracts.task import Task
from vlm_core.errors import ConfigError
from vlm_core.models.weights import IMAGENET_MOBILENET_V2


@pytest.mark.parametrize(
    ("task", "data", "name"),
    [
        (Task.CLASSIFICATION, "fashion-mnist", "fashion-mnist-classifier"),
        (Task.DETECTION, "scenes://?n=2000", "scenes-detector"),
        (Task.SEGMENTATION, "scenes://?n=10", "scenes-segmenter"),
        (Task.DETECTION, "coco:/data/shop/annotations.json", "coco-detector"),
        (Task.CLASSIFICATION, "/data/My Parts/", "my-parts-classifier"),
    ],
)
def test_default_model_names(task: Task, data: str, name: str) -> None:
    assert default_model_name(task, data) == name


def test_only_task_and_data_give_a_complete_request() -> None:
    request = TrainRequest(Task.DETECTION, "scenes://?n=100").resolved()
    assert request.arch == "fasterrcnn_mobilenet_v2" and request.init == IMAGENET_MOBILENET_V2
    assert request.epochs and request.batch_size and request.lr and request.name == "scenes-detector"
    classifier = TrainRequest(Task.CLASSIFICATION, "fashion-mnist").resolved()
    assert classifier.arch == "vgg6_bn" and classifier.init == "none" and classifier.input_size == 32
    assert classifier.epochs == 12 and classifier.lr == 3e-3
    folder = TrainRequest(Task.CLASSIFICATION, "/data/garments").resolved()
    assert (folder.arch, folder.input_size, folder.epochs) == ("mobilenet_v3_small", 48, 10)
    explicit = TrainRequest(Task.CLASSIFICATION, "fashion-mnist", arch="resnet18", epochs=3, init="none").resolved()
    assert (explicit.arch, explicit.epochs, explicit.init) == ("resnet18", 3, "none")


def test_init_options() -> None:
    assert init_weights("none") == {}
    assert init_weights("/w/imagenet.pth") == {"backbone_weights": "/w/imagenet.pth"}
    with pytest.raises(ConfigError, match="--init pretrained"):
        init_weights("pretrained")
    with pytest.raises(ConfigError, match="--workers"):
        TrainRequest(Task.CLASSIFICATION, "fashion-mnist", workers=0).resolved()


def test_gate_domains_parse_and_need_a_promotion() -> None:
    from services.trainer.job import GateDomain

    domain = GateDomain.parse("drifted:+0.05=scenes://?style=clutter&n=20")
    assert domain == GateDomain("drifted", 0.05, "scenes://?style=clutter&n=20")
    assert GateDomain.parse("old:-0.05=scenes://").min_delta == -0.05
    for bad in ("drifted", "drifted=scenes://", ":0.1=scenes://", "d:x=scenes://", "d:0.1="):
        with pytest.raises(ConfigError):
            GateDomain.parse(bad)
    with pytest.raises(ConfigError, match="--gate decides a promotion"):
        TrainRequest(Task.DETECTION, "scenes://?n=10", gates=(domain,)).resolved()
    from vlm_core.errors import DatasetError

    request = TrainRequest(Task.DETECTION, "scenes://?n=10", gates=(GateDomain("d", 0, "scenes://?style=odd"),))
    with pytest.raises(DatasetError, match="not a scene style"):
        request.check_gates()


def _teacher(**changes: object) -> dict[str, object]:
    spec = {
        "task": "classification",
        "arch": "vgg6_bn",
        "weights": "/registry/fm/v6/model.safetensors",
        "class_names": ["a", "b"],
        "name": "fm",
        "version": "6",
        "input_size": 32,
        "optimization": None,
    }
    return {**spec, **changes}


def test_a_distillation_request_lands_under_its_teachers_name() -> None:
    request = TrainRequest(Task.CLASSIFICATION, "/data/ab", arch="vgg6_bn_slim", teacher=_teacher()).resolved()
    assert request.name == "fm" and request.arch == "vgg6_bn_slim"
    request.check_teacher_classes(("a", "b"))
    with pytest.raises(ConfigError, match="predicts other classes"):
        request.check_teacher_classes(("a", "c"))


@pytest.mark.parametrize(
    ("task", "teacher", "options", "message"),
    [
        (Task.DETECTION, _teacher(task="detection"), {}, "detection training cannot distil"),
        (Task.SEGMENTATION, _teacher(), {}, "is not a segmentation model"),
        (Task.CLASSIFICATION, _teacher(optimization="int8"), {}, "int8-compressed"),
        (Task.CLASSIFICATION, _teacher(), {"distill_weight": 0.0}, "--distill-weight must be in"),
        (Task.CLASSIFICATION, _teacher(), {"temperature": -1.0}, "--temperature above 0"),
    ],
)
def test_a_teacher_that_cannot_be_distilled_says_why(
    task: Task, teacher: dict[str, object], options: dict[str, float], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        TrainRequest(task, "/data/ab", teacher=teacher, **options).resolved()  # type: ignore[arg-type]
