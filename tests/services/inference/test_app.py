"""The typed application builder, as Ray Serve's config path calls it (no cluster needed)."""

from __future__ import annotations

import pytest
from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
from ray.serve.deployment import Application

from services.inference import deploy
from services.inference.app import build_app
from vlm_core.pipeline import PipelineConfig


def test_serve_validates_the_shipped_config_args_into_a_pipeline_config() -> None:
    args = deploy.plan().applications["vlm"]  # deploy/serve/pipeline.yaml, shipped as package data
    app = call_user_app_builder_with_args_if_necessary(build_app, args)
    assert isinstance(app, Application)
    assert build_app.__annotations__["config"] is PipelineConfig


def test_bad_args_fail_in_validation_not_in_a_replica() -> None:
    from pydantic import ValidationError

    args = deploy.plan().applications["vlm"]
    args["processor"] = {**args.get("processor", {}), "batch_size": 0}
    with pytest.raises(ValidationError, match="batch_size"):
        call_user_app_builder_with_args_if_necessary(build_app, args)


def test_each_model_deployment_knows_the_frames_a_request_carries() -> None:
    args = deploy.plan().applications["vlm"]
    args["processor"] = {**args.get("processor", {}), "batch_size": 8}
    app = call_user_app_builder_with_args_if_necessary(build_app, args)
    models = app._bound_deployment.init_args[1]
    assert models and all(model._bound_deployment.init_args[-1] == 8 for model in models.values())


def test_model_replicas_start_with_an_allocator_that_keeps_freed_memory() -> None:
    from services.inference.app import deployment_options
    from vlm_core.pipeline import DeploymentSettings

    options = deployment_options(DeploymentSettings())
    tunables = options["ray_actor_options"]["runtime_env"]["env_vars"]["GLIBC_TUNABLES"]
    assert "glibc.malloc.arena_max=1" in tunables.split(":")
    off = deployment_options(DeploymentSettings(keep_freed_memory=False))
    assert "runtime_env" not in off["ray_actor_options"]


def test_a_processor_that_holds_the_models_gets_their_resources_and_no_deployments() -> None:
    from services.chaos import CHAOS_MODEL
    from services.inference.processor import HostedModel
    from vlm_core.config import Topics
    from vlm_core.contracts.task import Task
    from vlm_core.pipeline import model_pipeline_args

    args = model_pipeline_args(
        "127.0.0.1:9092",
        Topics(),
        Task.CLASSIFICATION,
        CHAOS_MODEL,
        processor={"model_hosting": "processor", "num_cpus": 0.25},
    )
    config = PipelineConfig.parse(args)
    app = call_user_app_builder_with_args_if_necessary(build_app, args)
    _config, deployments, hosted = app._bound_deployment.init_args
    assert deployments == {}
    assert set(hosted) == set(config.models) and all(isinstance(h, HostedModel) for h in hosted.values())
    model_cpus = sum(model.deployment.num_cpus for model in config.models.values())
    options = app._bound_deployment.ray_actor_options
    assert options["num_cpus"] == pytest.approx(0.25 + model_cpus)
    assert "GLIBC_TUNABLES" in options["runtime_env"]["env_vars"]  # the models' allocator setting
    assert hosted[Task.CLASSIFICATION].spec == config.models[Task.CLASSIFICATION].model_spec()
