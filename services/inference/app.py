"""Serve application builder: ``import_path: services.inference.app:build_app``.

No ``from __future__ import annotations`` here: Serve validates a config file's ``args``
into the builder's parameter type only when the annotation is the class itself.

``deploy/serve/pipeline.yaml`` is a plain Serve config: ``serve run`` / ``serve deploy``
call :func:`build_app` with the ``args`` block, and so does ``vlm serve``.
"""

import os
from collections.abc import Mapping
from typing import Any

from ray import serve
from ray.serve import Application

from services.inference.model_server import ModelServer
from services.inference.processor import HostedModel, StreamProcessorReplica
from services.kafka_io import SECURITY_ENV
from vlm_core.config import LocalSettings
from vlm_core.contracts.task import Task
from vlm_core.cpu import keep_freed_memory_environment
from vlm_core.pipeline import DeploymentSettings, ModelHosting, PipelineConfig
from vlm_core.registry import RegistryFollow
from vlm_core.tasks import get_profile

PROCESSOR_NAME = "StreamProcessor"


def _cluster_has_gpu() -> bool:
    try:
        import ray

        return bool(ray.is_initialized() and ray.cluster_resources().get("GPU", 0) > 0)
    except Exception:
        return False


def _gpus(settings: DeploymentSettings) -> float:
    if settings.num_gpus == "auto":
        return settings.gpu_fraction if _cluster_has_gpu() else 0.0
    return float(settings.num_gpus)


def deployment_options(settings: DeploymentSettings) -> dict[str, Any]:
    options: dict[str, Any] = {
        "max_ongoing_requests": settings.max_ongoing_requests,
        "ray_actor_options": {
            "num_cpus": settings.num_cpus,
            "num_gpus": _gpus(settings),
            **({"resources": settings.ray_resources} if settings.ray_resources else {}),
            # Ray merges these variables with the job's.
            **({"runtime_env": {"env_vars": keep_freed_memory_environment()}} if settings.keep_freed_memory else {}),
        },
        "health_check_period_s": 5,
        "graceful_shutdown_timeout_s": 30,
    }
    if settings.min_replicas == settings.max_replicas:
        options["num_replicas"] = settings.min_replicas
    else:
        options["autoscaling_config"] = {
            "min_replicas": settings.min_replicas,
            "max_replicas": settings.max_replicas,
            "target_ongoing_requests": settings.target_ongoing_requests,
        }
    return options


def kafka_credentials(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The processor's Kafka credentials are those of whoever builds the application
    (``vlm serve`` with a principal's ``VLM_KAFKA_*``, or a cluster whose pods carry them):
    they travel in its replicas' runtime_env, and only there; the model deployments never
    see Kafka."""
    return {name: environ[name] for name in SECURITY_ENV if environ.get(name)}


def processor_options(config: PipelineConfig, hosted: Mapping[Task, HostedModel]) -> dict[str, Any]:
    """The processor deployment's Serve options. A processor that holds the models
    (``model_hosting: processor``) asks for their CPUs and GPUs beside its own."""
    settings = config.processor
    env_vars = kafka_credentials()
    if any(model.settings.keep_freed_memory for model in hosted.values()):
        env_vars.update(keep_freed_memory_environment())
    gpus = sum(_gpus(model.settings) for model in hosted.values())
    return {
        "name": PROCESSOR_NAME,
        "num_replicas": settings.replicas,
        "max_ongoing_requests": 4,
        "ray_actor_options": {
            "num_cpus": settings.num_cpus + sum(model.settings.num_cpus for model in hosted.values()),
            **({"num_gpus": gpus} if gpus else {}),
            **({"resources": settings.ray_resources} if settings.ray_resources else {}),
            **({"runtime_env": {"env_vars": env_vars}} if env_vars else {}),
        },
        "health_check_period_s": 5,
        "graceful_shutdown_timeout_s": 60,
    }


def build_app(config: PipelineConfig) -> Application:
    """The typed application builder: ``serve run``/``serve deploy`` validate the config
    file's ``args`` into a PipelineConfig (Serve does that for a pydantic-typed builder),
    ``vlm serve`` passes the one it parsed. Specs cross to the replicas as ModelSpec."""
    deployments: dict[Task, Any] = {}
    hosted: dict[Task, HostedModel] = {}
    registry_dir = config.registry_dir or str(LocalSettings.from_env().registry_dir)
    for task, model in config.models.items():
        follow = None
        if model.registry_name:
            follow = RegistryFollow(registry_dir, model.registry_name, model.registry_poll_s, model.serving_overrides())
        spec = follow.spec() if follow else model.model_spec()
        if config.processor.model_hosting is ModelHosting.PROCESSOR:
            hosted[task] = HostedModel(spec, model.deployment, follow)
            continue
        deployment = serve.deployment(ModelServer).options(
            name=get_profile(task).deployment_name, **deployment_options(model.deployment)
        )
        deployments[task] = deployment.bind(spec, model.deployment, follow, config.processor.batch_size)
    processor = serve.deployment(StreamProcessorReplica).options(**processor_options(config, hosted))
    return processor.bind(config, deployments, hosted)
