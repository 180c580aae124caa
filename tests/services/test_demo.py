from pathlib import Path

from services.demo import DEMO_REGISTRY_NAMES, QUICK_TRAINING, pipeline_args
from services.trainer.job import TrainRequest
from tests.vlm_core.models.test_coco_weights import place_weights
from vlm_core.config import LocalSettings
from vlm_core.contracts.task import Task
from vlm_core.datasets import SCENE_CLASSES
from vlm_core.models import build_model
from vlm_core.models.spec import ModelSpec
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


def test_live_table_shows_unicode_and_markup_like_camera_ids_with_their_drops() -> None:
    import io
    import time as time_module

    from rich.console import Console

    from services.demo import LiveStats, _drops_by_camera
    from vlm_core import metrics as m

    stats = LiveStats("127.0.0.1:1", "vlm.results")  # the reader thread is never started
    for camera in ("камера-1 📷", "[bold]cam[/]"):
        stats.count[camera] = 3
        stats.recent[camera].append((time_module.time(), 40.0))
        stats.last[camera] = "class=x (0.50)"
    sink = m.MetricsSink()
    sink.inc(m.FRAMES_DROPPED, 2, camera_id="камера-1 📷", reason="stale")
    table = stats.table(_drops_by_camera(sink.counter_samples()))
    out = io.StringIO()
    Console(file=out, width=200, color_system=None).print(table)
    text = out.getvalue()
    assert "камера-1 📷" in text and "[bold]cam[/]" in text
    row = next(line for line in text.splitlines() if "камера" in line)
    assert " 2 " in row, row  # its drops, looked up by its metric label


def test_event_counts_tally_crossings_and_zones_and_take_snapshots() -> None:
    from services.demo import EventCounts
    from vlm_core.contracts.dlq import FrameRef
    from vlm_core.contracts.event import Event, EventType

    def event(kind: EventType, **fields: object) -> Event:
        return Event(kind, "cam", 1, 1, FrameRef("f", 0, 1), **fields)  # type: ignore[arg-type]

    counts = EventCounts()
    counts.add(event(EventType.LINE_CROSSED, track_id=1, line="middle", direction="in"))
    counts.add(event(EventType.ZONE_ENTERED, track_id=1, zone="right"))
    counts.add(event(EventType.ZONE_ENTERED, track_id=2, zone="right"))
    counts.add(event(EventType.ZONE_EXITED, track_id=1, zone="right", dwell_s=1.0))
    assert counts.describe() == "middle: in 1 out 0; right: 1 now, 2 entered"
    snapshot = {
        "zones": {"right": {"occupancy": 0, "entered": 5, "exited": 5}},
        "lines": {"middle": {"in": 3, "out": 2}},
    }
    counts.add(event(EventType.COUNTS, counts=snapshot))
    assert counts.describe() == "middle: in 3 out 2; right: 0 now, 5 entered"


def test_the_real_video_camera_gets_coco_models_where_their_weights_load(
    tmp_path: Path,
    torch_home: Path,
) -> None:
    from services.demo import (
        REAL_VIDEO_CAMERA,
        coco_models,
        coco_pipeline_args,
        fetch_coco_weights,
        serving_notes,
    )
    from vlm_core.pipeline import PipelineConfig
    from vlm_core.tasks import build_predictor

    missing = fetch_coco_weights(timeout_s=0.5)  # offline here: nothing downloads
    assert len(missing) == 2 and all(str(torch_home) in m for m in missing)
    notes = serving_notes(["classification", "detection"], missing, real_video=True)
    assert len(notes) == 1 and "could not be downloaded" in notes[0] and missing[0] in notes[0]

    assert coco_models() == {
        Task.DETECTION: "ssdlite320_mobilenet_v3_large",
        Task.SEGMENTATION: "lraspp_mobilenet_v3_large",
    }
    scenes, _served, _missing = pipeline_args(LocalSettings(registry_dir=tmp_path / "models"), ModelRegistry(tmp_path))
    assert REAL_VIDEO_CAMERA not in scenes["cameras"]["overrides"]  # without COCO it gets the scenes models
    for arch in coco_models().values():
        place_weights(arch)
    assert fetch_coco_weights(timeout_s=0.5) == []
    settings = LocalSettings(registry_dir=tmp_path / "models")
    scenes, served, _missing = pipeline_args(settings, ModelRegistry(settings.registry_dir), coco=True)
    coco = coco_pipeline_args(settings)
    scenes_config, coco_config = PipelineConfig.model_validate(scenes), PipelineConfig.model_validate(coco)
    assert scenes_config.cameras.policy_for(REAL_VIDEO_CAMERA).tasks == ()
    assert Task.CLASSIFICATION in scenes_config.cameras.policy_for("synthetic-0").tasks
    assert coco_config.cameras.policy_for(REAL_VIDEO_CAMERA).tasks == (Task.DETECTION, Task.SEGMENTATION)
    assert coco_config.cameras.policy_for("synthetic-0").tasks == ()
    assert coco_config.processor.group_id != scenes_config.processor.group_id  # both read every frame
    assert coco_config.topics == scenes_config.topics and not coco_config.active_learning.enabled
    for task, model in coco_config.models.items():
        predictor = build_predictor(model.model_spec(), device="cpu")  # from the cache, offline
        assert "person" in predictor.class_names, task
    assert serving_notes(served, [], real_video=True)[0].startswith(f"{REAL_VIDEO_CAMERA}: detection")
