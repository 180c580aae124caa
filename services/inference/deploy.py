"""Deploy, inspect and delete the Serve application on a running Ray cluster."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.resources import resource
from vlm_core.config import ray_environment
from vlm_core.contracts.task import Task
from vlm_core.errors import ConfigError, InfrastructureError, WeightsError
from vlm_core.pipeline import (
    PipelineConfig,
    load_serve_config,
    serve_applications,
    without_applications,
)

if TYPE_CHECKING:
    from services.inference.processor import ProcessorStats
    from vlm_core.stream import BatchTiming
    from vlm_core.stream.profile import StageTotals

DEFAULT_CONFIG = resource("serve/pipeline.yaml")


#: How long `connect` waits for the Ray head's port before saying it is not running.
PROBE_TIMEOUT_S = 3.0


def _probe(address: str) -> None:
    """Fail in seconds, with one line, when nothing listens at a ``host:port`` Ray address;
    ``ray.init`` itself retries the GCS for minutes, printing C++ warnings."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "://" in address:
        return  # "auto", ray:// client addresses: leave them to Ray
    try:
        with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=PROBE_TIMEOUT_S):
            pass
    except OSError as exc:
        raise InfrastructureError(
            f"Ray is not running at {address} ({exc.strerror or exc})",
            hint="start it with `vlm local up`, or pass --ray-address HOST:PORT of a running cluster",
        ) from None


def connect(address: str) -> None:
    os.environ.update(ray_environment())  # before Ray is imported: it reads them at import time
    import ray

    if ray.is_initialized():
        return
    _probe(address)
    try:
        ray.init(
            address=address,
            logging_level="ERROR",
            log_to_driver=False,
            runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", **ray_environment()}},
        )
    except ConnectionError as exc:
        raise InfrastructureError(
            f"cannot reach Ray at {address}: {exc}", hint="start it with `vlm local up`"
        ) from None


@dataclass(frozen=True)
class ServePlan:
    """What a Serve config deploys: its applications' args by name (file order, validated),
    and the optional ones skipped with the reason."""

    applications: dict[str, dict[str, Any]]
    #: The one application asked for by name, if any: it is never skipped.
    selected: str | None = None
    skipped: dict[str, str] = field(default_factory=dict)
    #: Per skipped application, the cameras it would have served (they go to the others).
    skipped_cameras: dict[str, list[str]] = field(default_factory=dict)
    #: Per application skipped for its weights, the files missing, each with the reason.
    missing_weights: dict[str, list[str]] = field(default_factory=dict)

    def configs(self, **overrides: Any) -> dict[str, PipelineConfig]:
        given = {k: v for k, v in overrides.items() if v is not None}
        return {name: PipelineConfig.parse({**args, **given}, source=name) for name, args in self.applications.items()}

    def without_unavailable(self, *, download_timeout_s: float | None = None) -> ServePlan:
        """This plan less the optional applications whose weights this machine cannot have.
        The application asked for by name is never skipped: its missing weights are the error."""
        from services.inference.weights import DOWNLOAD_TIMEOUT_S, unavailable_weights

        skipped: dict[str, str] = {}
        cameras: dict[str, list[str]] = {}
        weights: dict[str, list[str]] = {}
        for name, config in self.configs().items():
            if not config.optional:
                continue
            missing = unavailable_weights(config, download_timeout_s=download_timeout_s or DOWNLOAD_TIMEOUT_S)
            if not missing:
                continue
            reason = f"its weights are not in torch's cache and could not be downloaded: {'; '.join(missing)}"
            if name == self.selected:
                raise WeightsError(f"application {name!r}: {reason}", hint="put the files there, or run online")
            skipped[name] = reason
            weights[name] = missing
            cameras[name] = sorted(c for c, p in config.cameras.overrides.items() if p.tasks)
        kept = without_applications(self.applications, set(skipped))
        return ServePlan(
            kept,
            self.selected,
            {**self.skipped, **skipped},
            {**self.skipped_cameras, **cameras},
            {**self.missing_weights, **weights},
        )


def load_config(config_path: Path | None, app_name: str | None = None, **overrides: Any) -> tuple[str, PipelineConfig]:
    """(application name, its PipelineConfig): the one named, else the file's first."""
    serve_plan = plan(config_path, app_name)
    name = app_name or next(iter(serve_plan.applications))
    return name, serve_plan.configs(**overrides)[name]


def plan(config_path: Path | None = None, app_name: str | None = None) -> ServePlan:
    """Every application of a Serve config (or only ``app_name``), validated; the cameras
    that a left-out application serves go back to the others' default policy."""
    source = str(config_path or DEFAULT_CONFIG)
    apps = serve_applications(load_serve_config(config_path or DEFAULT_CONFIG), source=source)
    if app_name is not None:
        if app_name not in apps:
            raise ConfigError(
                f"{source} has no application named {app_name!r}", hint=f"choose one of: {', '.join(apps)}"
            )
        apps = without_applications(apps, set(apps) - {app_name})
    for name, args in apps.items():
        PipelineConfig.parse(args, source=f"{source} ({name})")
    return ServePlan(apps, app_name)


def deploy(config: PipelineConfig | dict[str, Any], *, app_name: str = "vlm", wait_s: float = 300.0) -> None:
    """Run the pipeline as Serve application ``app_name`` and wait until it is RUNNING."""
    from ray import serve

    from services.inference.app import build_app

    logging_config = {"enable_access_log": False, "log_level": "INFO"}
    serve.start(proxy_location="Disabled", logging_config=logging_config)
    if not isinstance(config, PipelineConfig):
        config = PipelineConfig.parse(config)
    serve.run(build_app(config), name=app_name, route_prefix=None, blocking=False, logging_config=logging_config)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        status = app_status(app_name)
        if status == "RUNNING":
            return
        if status in ("DEPLOY_FAILED", "UNHEALTHY"):
            raise InfrastructureError(f"Serve application {app_name!r} is {status}: {app_message(app_name)}")
        time.sleep(1)
    raise InfrastructureError(f"Serve application {app_name!r} not running after {wait_s:.0f}s")


def app_status(app_name: str) -> str | None:
    from ray import serve

    app = serve.status().applications.get(app_name)
    return None if app is None else str(app.status.value if hasattr(app.status, "value") else app.status)


def app_message(app_name: str) -> str:
    from ray import serve

    app = serve.status().applications.get(app_name)
    if app is None:
        return ""
    parts = [app.message] + [f"{n}: {d.message}" for n, d in app.deployments.items() if d.message]
    return "; ".join(p for p in parts if p)


def delete(app_name: str = "vlm") -> None:
    from ray import serve

    serve.delete(app_name)


def processor_stats(app_name: str = "vlm") -> ProcessorStats:
    return processor_stats_reader(app_name)()


def processor_stats_reader(app_name: str = "vlm") -> Callable[[], ProcessorStats]:
    """Reads the app's processor stats through one handle, for repeated reads: each new
    handle sets up a router of its own."""
    from ray import serve

    stats = serve.get_deployment_handle("StreamProcessor", app_name=app_name).stats
    return lambda: stats.remote().result(timeout_s=30)


def processor_batch_timings(app_name: str = "vlm", since_ms: int = 0) -> list[BatchTiming]:
    """The app's processor's timing of each batch sent at or after ``since_ms``."""
    from ray import serve

    handle = serve.get_deployment_handle("StreamProcessor", app_name=app_name)
    timings: list[BatchTiming] = handle.batch_timings.remote(since_ms).result(timeout_s=30)
    return timings


def _ask_model(app_name: str, task: Task, method: str) -> Any:
    """Call ``method`` of the app's model for ``task``: on a replica of its deployment, or,
    where the processor holds the models (``model_hosting: processor``), on the processor."""
    from ray import serve

    from services.inference.app import PROCESSOR_NAME
    from vlm_core.tasks import get_profile

    name = get_profile(task).deployment_name
    app = serve.status().applications.get(app_name)
    if app is not None and name not in app.deployments and PROCESSOR_NAME in app.deployments:
        processor = serve.get_deployment_handle(PROCESSOR_NAME, app_name=app_name)
        return getattr(processor, f"model_{method}").remote(task).result(timeout_s=30)
    return getattr(serve.get_deployment_handle(name, app_name=app_name), method).remote().result(timeout_s=30)


def model_replica_info(app_name: str, task: Task) -> dict[str, Any]:
    """What a replica of the app's model for ``task`` says of itself (``info``)."""
    info: dict[str, Any] = _ask_model(app_name, task, "info")
    return info


def model_replica_pid(app_name: str, task: Task) -> int:
    """The process of a replica of the app's model for ``task`` (the processor's, where it
    holds the models)."""
    return int(model_replica_info(app_name, task)["pid"])


def model_replica_stages(app_name: str, task: Task) -> dict[str, StageTotals]:
    """Wall and CPU seconds by stage of a replica of the app's model for ``task``."""
    stages: dict[str, StageTotals] = _ask_model(app_name, task, "stages")
    return stages
