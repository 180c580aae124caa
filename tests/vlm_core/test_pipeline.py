from __future__ import annotations

from pathlib import Path

import pytest

from vlm_core.contracts.task import Task
from vlm_core.errors import ConfigError
from vlm_core.pipeline import DropPolicy, PipelineConfig, load_serve_config, pipeline_args

REPO = Path(__file__).resolve().parents[2]
SPEC = {"task": "classification", "arch": "mobilenet_v3_small", "class_names": ["a", "b"]}


def test_shipped_pipeline_yaml_is_valid() -> None:
    name, args = pipeline_args(load_serve_config(REPO / "deploy" / "serve" / "pipeline.yaml"))
    config = PipelineConfig.parse(args)
    assert name == "vlm"
    assert Task.CLASSIFICATION in config.models
    assert config.cameras.policy_for("any").drop_policy is DropPolicy.PROCESS_ALL


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
