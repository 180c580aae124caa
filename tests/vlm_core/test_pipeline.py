from __future__ import annotations

from pathlib import Path

import pytest

from vlm_core.contracts.task import Task
from vlm_core.errors import ConfigError
from vlm_core.pipeline import (
    DropPolicy,
    PipelineConfig,
    load_serve_config,
    serve_applications,
    without_applications,
)

REPO = Path(__file__).resolve().parents[2]
SPEC = {"task": "classification", "arch": "mobilenet_v3_small", "class_names": ["a", "b"]}


def test_shipped_pipeline_yaml_is_valid() -> None:
    apps = serve_applications(load_serve_config(REPO / "deploy" / "serve" / "pipeline.yaml"))
    name, args = next(iter(apps.items()))
    config = PipelineConfig.parse(args)
    assert name == "vlm"
    assert Task.CLASSIFICATION in config.models
    assert config.cameras.policy_for("any").drop_policy is DropPolicy.PROCESS_ALL


def test_shipped_config_serves_the_real_video_camera_from_an_optional_coco_application() -> None:
    apps = serve_applications(load_serve_config(REPO / "deploy" / "serve" / "pipeline.yaml"))
    configs = {name: PipelineConfig.parse(args) for name, args in apps.items()}
    assert list(configs) == ["vlm", "vlm-coco"]
    main, coco = configs["vlm"], configs["vlm-coco"]
    assert not main.optional and coco.optional
    assert main.cameras.policy_for("vtest").tasks == () and main.cameras.policy_for("vtest").served_by == "vlm-coco"
    assert coco.cameras.policy_for("vtest").tasks == (Task.DETECTION, Task.SEGMENTATION)
    assert coco.cameras.policy_for("synthetic-0").tasks == ()
    assert {m.model_spec().weights for m in coco.models.values()} == {"pretrained"}
    assert coco.processor.group_id != main.processor.group_id  # each reads every frame
    # Without the COCO application, the camera goes back to the main one's default models.
    alone = PipelineConfig.parse(without_applications(apps, {"vlm-coco"})["vlm"])
    assert alone.cameras.policy_for("vtest") == alone.cameras.default
    assert "vtest" in apps["vlm"]["cameras"]["overrides"]  # the input is not changed


def test_served_by_names_another_application_and_takes_no_tasks() -> None:
    cameras = {"overrides": {"door": {"served_by": "other", "tasks": ["detection"]}}}
    with pytest.raises(ConfigError, match="gets no tasks here"):
        PipelineConfig.parse({"models": {"classification": {"spec": SPEC}}, "cameras": cameras})
    app = {"name": "one", "args": {"cameras": {"overrides": {"door": {"served_by": "nobody"}}}}}
    with pytest.raises(ConfigError, match="served_by names 'nobody', which is not another application"):
        serve_applications({"applications": [app]})
    app["args"]["cameras"]["overrides"]["door"]["served_by"] = "one"
    with pytest.raises(ConfigError, match="not another application"):
        serve_applications({"applications": [app]})


def test_routing_overrides() -> None:
    config = PipelineConfig.parse(
        {
            "models": {"classification": {"spec": SPEC}},
            "cameras": {"overrides": {"gate": {"tasks": ["detection"], "drop_policy": "drop_stale", "max_age_ms": 50}}},
        }
    )
    assert config.cameras.policy_for("gate").tasks == (Task.DETECTION,)
    assert config.cameras.policy_for("lobby").tasks == tuple(Task)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"models": {}}, "at least one model"),
        ({"models": {"detection": {"spec": SPEC}}}, "has a classification spec"),
        ({"models": {"classification": {"spec": SPEC, "deployment": {"max_batch_size": 4}}}}, "max_batch_size"),
        ({"models": {"classification": {"spec": SPEC}}, "processor": {"batch_sise": 3}}, "batch_sise"),
        (
            {"models": {"classification": {"spec": SPEC}}, "cameras": {"default": {"drop_policy": "maybe"}}},
            "drop_policy",
        ),
        (
            {
                "models": {"classification": {"spec": SPEC, "deployment": {"max_replicas": 3}}},
                "processor": {"model_hosting": "processor"},
            },
            "scale with processor.replicas",
        ),
        ({"models": {"classification": {"spec": SPEC}}, "processor": {"model_hosting": "actor"}}, "model_hosting"),
    ],
)
def test_bad_config_is_one_clear_error(args: dict, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ConfigError, match=message):
        PipelineConfig.parse(args)


def test_serve_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_serve_config(tmp_path / "none.yaml")
    (tmp_path / "x.yaml").write_text("proxy_location: Disabled\n")
    with pytest.raises(ConfigError, match="applications"):
        load_serve_config(tmp_path / "x.yaml")
