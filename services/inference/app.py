"""Serve application builder: ``import_path: services.inference.app:build_app``.

``deploy/serve/pipeline.yaml`` is a plain Serve config: ``serve run`` / ``serve deploy``
call :func:`build_app` with the ``args`` block, and so does ``vlm serve``.
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve import Application

from services.inference.model_server import ModelServer
from services.inference.processor import StreamProcessorReplica
from vlm_core.config import LocalSettings
from vlm_core.models.spec import Task
from vlm_core.pipeline import DeploymentSettings, PipelineConfig
from vlm_core.registry import production_spec

DEPLOYMENT_NAMES = {
    Task.CLASSIFICATION: "Classifier",
    Task.DETECTION: "Detector",
    Task.SEGMENTATION: "Segmenter",
}
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
        "ray_actor_options": {"num_cpus": settings.num_cpus, "num_gpus": _gpus(settings)},
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


def build_app(args: dict[str, Any]) -> Application:
    config = PipelineConfig.parse(args)
    models = {}
    registry_dir = config.registry_dir or str(LocalSettings.from_env().registry_dir)
    for task, model in config.models.items():
        d = model.deployment
        spec = model.spec
        follow = None
        if model.registry_name:
            spec = production_spec(registry_dir, model.registry_name, model.spec).to_dict()
            follow = {
                "root": registry_dir,
                "name": model.registry_name,
                "poll_s": model.registry_poll_s,
                "base": model.spec,
            }
        deployment = serve.deployment(ModelServer).options(name=DEPLOYMENT_NAMES[task], **deployment_options(d))
        models[task.value] = deployment.bind(spec, d.torch_threads, d.max_batch_size, d.batch_wait_timeout_s, follow)
    processor = serve.deployment(StreamProcessorReplica).options(
        name=PROCESSOR_NAME,
        num_replicas=config.processor.replicas,
        max_ongoing_requests=4,
        ray_actor_options={"num_cpus": config.processor.num_cpus},
        health_check_period_s=5,
        graceful_shutdown_timeout_s=60,
    )
    return processor.bind(config.model_dump(mode="json"), models)
