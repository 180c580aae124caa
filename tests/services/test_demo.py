from pathlib import Path

from services.demo import DEMO_REGISTRY_NAMES, QUICK_TRAINING, pipeline_args
from services.trainer.job import TrainRequest
from vlm_core.config import LocalSettings
from vlm_core.datasets import SCENE_CLASSES
from vlm_core.models import build_model
from vlm_core.models.spec import ModelSpec, Task
from vlm_core.registry import ModelRegistry, ModelStatus


def test_demo_serves_registered_models_and_names_the_missing_ones(tmp_path: Path) -> None:
    settings = LocalSettings(registry_dir=tmp_path / "models")
    registry = ModelRegistry(settings.registry_dir)
    args, served, missing = pipeline_args(settings, registry)
    assert served == ["classification"] and missing == [Task.DETECTION, Task.SEGMENTATION]
    assert args["cameras"]["default"]["tasks"] == ["classification"]

    model, _ = build_model(ModelSpec(Task.DETECTION, "fasterrcnn_mobilenet_v2", class_names=SCENE_CLASSES))
    version = registry.register(
        DEMO_REGISTRY_NAMES[Task.DETECTION],
        task=Task.DETECTION,
        arch="fasterrcnn_mobilenet_v2",
        class_names=SCENE_CLASSES,
        state_dict=model.state_dict(),
        metrics={"map50": 0.7},
        primary_metric="map50",
    )
    registry.promote(version.name, version.version)
    assert registry.production(version.name).status is ModelStatus.PRODUCTION
    args, served, missing = pipeline_args(settings, registry)
    assert served == ["classification", "detection"] and missing == [Task.SEGMENTATION]
    assert args["models"]["detection"]["registry_name"] == "scenes-detector"
    assert args["cameras"]["default"]["drop_policy"] == "drop_stale"


def test_quick_training_configurations_are_valid_requests() -> None:
    for task, options in QUICK_TRAINING.items():
        request = TrainRequest(task=task, name=DEMO_REGISTRY_NAMES[task], workers=1, **options).resolved()
        assert request.load_data().task is task
