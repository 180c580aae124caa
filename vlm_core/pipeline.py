"""Pipeline configuration: what ``deploy/serve/pipeline.yaml`` passes to the Serve app.

The same args drive ``vlm serve`` and Ray's own ``serve run`` / ``serve deploy``.
"""

from __future__ import annotations

import copy
import enum
from pathlib import Path
from typing import Any

import yaml
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, model_validator

from vlm_core.config import LocalSettings, Topics
from vlm_core.contracts.frame import FrameLimits
from vlm_core.contracts.task import Task
from vlm_core.errors import ConfigError, first_error
from vlm_core.models.spec import Graph, ModelSpec


class DropPolicy(str, enum.Enum):
    #: Every frame gets a result, however late.
    PROCESS_ALL = "process_all"
    #: Frames older than ``max_age_ms`` when dequeued are dropped (and counted).
    DROP_STALE = "drop_stale"


class Delivery(str, enum.Enum):
    #: Offsets are committed after the broker acknowledged the batch's outputs: a failure
    #: between the two repeats outputs (readers de-duplicate by camera and seq).
    AT_LEAST_ONCE = "at_least_once"
    #: Each batch's outputs and its offsets are one Kafka transaction: readers that read
    #: ``read_committed`` (every reader the project ships) see each output once.
    EXACTLY_ONCE = "exactly_once"


class ModelInput(str, enum.Enum):
    #: The processor decodes each frame and sends its pixels to the model replicas: one
    #: decode for all of a camera's tasks, and width x height x 3 bytes a frame through
    #: Ray's object store (230 KB at 320x240, 2.8 MB at 1280x720).
    DECODED = "decoded"
    #: The processor checks each frame's structure (limits, JPEG segments, PNG header,
    #: size against the headers) and sends its encoded bytes; each model replica decodes
    #: on its pre-processing thread. A frame whose pixels the codec still refuses is
    #: dead-lettered with its reason, as if the processor had decoded it.
    ENCODED = "encoded"


class ModelHosting(str, enum.Enum):
    #: Each task's model is a Serve deployment of its own, called through a handle with one
    #: request a batch: replicas scale and move independently of the processors.
    DEPLOYMENTS = "deployments"
    #: Each processor replica holds its tasks' models in its own process, on threads of
    #: their own, as a deployment's replica does (preprocessing beside the forward pass,
    #: the registry followed): no Ray hop, no frame through the object store. The models
    #: scale with the processor replicas, one copy each.
    PROCESSOR = "processor"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TrackerKind(str, enum.Enum):
    #: ByteTrack's two-stage association (high-score boxes, then low-score ones).
    BYTETRACK = "bytetrack"


class TrackingSettings(_Strict):
    """A camera's multi-object tracker (ByteTrack, class-aware: a track never changes class)."""

    tracker: TrackerKind = TrackerKind.BYTETRACK
    #: Boxes scoring at least this are matched first; lower ones (down to ``low_score``)
    #: only extend tracks that are already seen, never start one.
    high_score: float = Field(default=0.5, ge=0, le=1)
    low_score: float = Field(default=0.1, ge=0, le=1)
    #: The score an unmatched box needs to start a (tentative) track.
    new_track_score: float = Field(default=0.6, ge=0, le=1)
    #: Minimum IoU of a high-score box with a track's predicted box to match it.
    match_iou: float = Field(default=0.2, gt=0, le=1)
    #: Minimum IoU in the second (low-score) stage.
    low_match_iou: float = Field(default=0.5, gt=0, le=1)
    #: Added to a match's cost (1 - IoU) when the box's class is not the track's: a class
    #: flicker of the detector still continues the track if the boxes overlap well (by
    #: ``match_iou + class_penalty``). 1 or more: boxes only ever match tracks of their class.
    class_penalty: float = Field(default=0.3, ge=0, le=2)
    #: Boxes overlapping a higher-scoring one this much are one object seen twice (a
    #: detector's per-class outputs): only the stronger one is tracked. 1: off.
    duplicate_iou: float = Field(default=0.7, gt=0, le=1)
    #: Consecutive matched frames before a track is confirmed and gets its id.
    min_hits: int = Field(default=3, ge=1, le=100)
    #: How long a confirmed track that is not seen is kept for re-identification.
    max_lost_s: float = Field(default=3.0, ge=0, le=3600)
    #: A camera that sends nothing for this long releases its tracks (its id counter and
    #: counts stay, so ids are never reused).
    idle_release_s: float = Field(default=120.0, gt=0)
    #: Recent frames whose ids and events are kept, so a frame processed again after a
    #: retry or a failover gets the same ids and events (at least the uncommitted window).
    replay_window: int = Field(default=64, ge=1, le=10_000)
    #: At most this many tracks per camera (the oldest lost ones go first).
    max_tracks: int = Field(default=256, ge=1, le=100_000)

    @model_validator(mode="after")
    def _check(self) -> TrackingSettings:
        if not self.low_score <= self.high_score:
            raise ValueError(f"low_score ({self.low_score}) must be <= high_score ({self.high_score})")
        if self.new_track_score < self.low_score:
            raise ValueError(f"new_track_score ({self.new_track_score}) must be >= low_score ({self.low_score})")
        return self


class Anchor(str, enum.Enum):
    """The point of a box that zones and lines test."""

    BOTTOM_CENTER = "bottom_center"
    CENTER = "center"
    TOP_CENTER = "top_center"


class Units(str, enum.Enum):
    PIXELS = "pixels"
    #: Fractions of the frame's width and height, 0..1.
    NORMALIZED = "normalized"


Point = tuple[float, float]


class _Region(_Strict):
    name: str = Field(min_length=1, max_length=64)
    units: Units = Units.PIXELS
    #: Class labels counted here; empty counts every class.
    classes: tuple[str, ...] = ()
    anchor: Anchor = Anchor.BOTTOM_CENTER

    def _check_points(self, points: tuple[Point, ...]) -> None:
        for x, y in points:
            if self.units is Units.NORMALIZED and not (0 <= x <= 1 and 0 <= y <= 1):
                raise ValueError(f"{self.name}: normalized point ({x}, {y}) is outside 0..1")
            if self.units is Units.PIXELS and (x < 0 or y < 0):
                raise ValueError(f"{self.name}: pixel point ({x}, {y}) is negative")


class ZoneSettings(_Region):
    """A polygon. A track is in it when its anchor is (with hysteresis at the border)."""

    polygon: tuple[Point, ...] = Field(min_length=3, max_length=256)
    #: ``dwell_exceeded`` fires once per stay when a track has been inside this long.
    dwell_threshold_s: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _check(self) -> ZoneSettings:
        self._check_points(self.polygon)
        return self


class LineSettings(_Region):
    """A segment from ``points[0]`` to ``points[1]``. Crossing it from its left to its right
    (as drawn on the image, facing from the first point to the second) is ``in``; the
    other way is ``out``."""

    points: tuple[Point, Point]

    @model_validator(mode="after")
    def _check(self) -> LineSettings:
        self._check_points(self.points)
        if self.points[0] == self.points[1]:
            raise ValueError(f"{self.name}: a line needs two distinct points")
        return self


class AnalyticsSettings(_Strict):
    zones: tuple[ZoneSettings, ...] = ()
    lines: tuple[LineSettings, ...] = ()
    #: An anchor must be this many pixels past a zone border or a line before its side
    #: changes, so a box jittering on the border does not count.
    hysteresis_px: float = Field(default=3.0, ge=0, le=1000)
    #: A ``counts`` event per camera every this many seconds of frame time (0: none).
    counts_interval_s: float = Field(default=10.0, ge=0)

    @model_validator(mode="after")
    def _check(self) -> AnalyticsSettings:
        names = [r.name for r in (*self.zones, *self.lines)]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"zone and line names must be unique per camera: {', '.join(duplicates)}")
        return self

    @property
    def enabled(self) -> bool:
        return bool(self.zones or self.lines)


class CameraPolicy(_Strict):
    tasks: tuple[Task, ...] = (Task.CLASSIFICATION, Task.DETECTION, Task.SEGMENTATION)
    #: Another application of the same Serve config serves this camera: this one routes it
    #: to no task. Where that application is not deployed (an optional one whose weights
    #: are missing), `vlm serve` drops this override, so the camera gets the default policy.
    served_by: str | None = Field(default=None, min_length=1)
    drop_policy: DropPolicy = DropPolicy.PROCESS_ALL
    max_age_ms: int = Field(default=2000, ge=1)
    #: Track objects across this camera's frames (needs the detection task).
    tracking: TrackingSettings | None = None
    #: Zones and lines over the tracks (needs tracking): events on ``topics.events``.
    analytics: AnalyticsSettings = AnalyticsSettings()

    @model_validator(mode="before")
    @classmethod
    def _served_elsewhere(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("served_by") is not None:
            if data.get("tasks"):
                raise ValueError("a camera with 'served_by' gets no tasks here: remove 'tasks' or 'served_by'")
            return {**data, "tasks": ()}
        return data

    @model_validator(mode="after")
    def _check(self) -> CameraPolicy:
        if self.tracking is not None and Task.DETECTION not in self.tasks:
            raise ValueError("tracking needs the detection task in 'tasks'")
        if self.analytics.enabled and self.tracking is None:
            raise ValueError("zones and lines count tracks: set 'tracking' too")
        return self


class CameraRouting(_Strict):
    default: CameraPolicy = CameraPolicy()
    overrides: dict[str, CameraPolicy] = {}

    def policy_for(self, camera_id: str) -> CameraPolicy:
        return self.overrides.get(camera_id, self.default)

    @property
    def tracked(self) -> bool:
        """Whether any camera is tracked."""
        return any(p.tracking is not None for p in (self.default, *self.overrides.values()))


class DeploymentSettings(_Strict):
    """Ray Serve options of one model deployment."""

    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=1, ge=1)
    target_ongoing_requests: float = Field(default=2.0, gt=0)
    max_ongoing_requests: int = Field(default=8, ge=1)
    #: Frames per model call; concurrent requests (each a frame batch) are merged up to it.
    max_batch_size: int = Field(default=16, ge=1)
    #: How long a model call waits for more requests once one has come. Requests queued
    #: while the model works are merged regardless; the wait only delays a lone request,
    #: and one processor sends its next batch when the last is answered, so it is 0. At
    #: 0.005 a 5 fps camera's p50 was 25-27 ms against 18-20 at 0 (3 alternating pairs of
    #: ``vlm bench pipeline --task classification --latency-fps 5``; README "Measured").
    batch_wait_timeout_s: float = Field(default=0.0, ge=0)
    #: After warming up at the processor's batch size (the frames a request carries), how
    #: long a replica loading a frozen float graph may spend warming up at
    #: ``max_batch_size`` and at each smaller size, from 1 up: a size's first batch builds
    #: its kernels (``Predictor.warmup_sizes``). A small classifier warms every size
    #: within it; a detector or segmenter warms its smallest sizes.
    warmup_s: float = Field(default=2.0, ge=0)
    num_cpus: float = Field(default=0.5, gt=0)
    #: "auto": a fraction of a GPU when the cluster has one, else none.
    num_gpus: float | str = "auto"
    gpu_fraction: float = Field(default=0.25, gt=0, le=1)
    torch_threads: int = Field(default=1, ge=1)
    #: How a float32 model runs on a CPU replica: ``frozen`` (TorchScript's inference
    #: passes at load) or ``eager``; see :class:`vlm_core.models.spec.Graph`.
    graph: Graph = Graph.FROZEN
    #: Start each replica with glibc keeping the memory it frees for its next batch,
    #: rather than give it back to the kernel and fault it in again
    #: (:func:`vlm_core.cpu.keep_freed_memory_environment`). Its resident size then stays
    #: at its largest batch's.
    keep_freed_memory: bool = True
    #: Niceness of the replica's preprocessing thread, which prepares the next batch while
    #: the forward pass of the one before runs: on a machine with few cores the forward
    #: pass keeps its core, and the preprocessing takes the idle cycles (0: the same
    #: priority).
    preprocess_niceness: int = Field(default=10, ge=0, le=19)
    #: Custom Ray resources each replica needs: places it on the nodes that offer them.
    ray_resources: dict[str, float] = Field(default_factory=dict)


class ModelConfig(_Strict):
    spec: dict[str, Any]
    deployment: DeploymentSettings = DeploymentSettings()
    #: Registry model name: when set, the deployment serves that name's production version
    #: and switches to a newly promoted one without restarting (checked every poll period).
    registry_name: str | None = None
    registry_poll_s: float = Field(default=5.0, gt=0)

    def model_spec(self) -> ModelSpec:
        return ModelSpec.from_dict(self.spec)

    def serving_overrides(self) -> dict[str, Any]:
        """The serving fields this config sets explicitly: they apply on top of a registry
        version's own (the rest of ``spec`` then only names the task and architecture)."""
        from vlm_core.registry import SERVING_OVERRIDES

        return {k: self.spec[k] for k in SERVING_OVERRIDES if self.spec.get(k) is not None}


class ProcessorSettings(_Strict):
    replicas: int = Field(default=1, ge=1)
    group_id: str = "vlm-stream-processor"
    #: Exactly once is the default: it cost no throughput in `vlm bench delivery` (README).
    delivery: Delivery = Delivery.EXACTLY_ONCE
    #: Exactly once: the broker aborts a transaction left open this long (a replica that
    #: died mid-batch); until then ``read_committed`` readers wait at it.
    transaction_timeout_ms: int = Field(default=20_000, ge=1_000, le=900_000)
    batch_size: int = Field(default=8, ge=1, le=1024)
    #: How long a poll waits for frames while no batch is at the models (a poll returns as
    #: soon as frames come; with batches in flight it lasts only until they are due back,
    #: see ``StreamProcessor._poll_wait_ms``): what an idle processor wakes up for.
    poll_timeout_ms: int = Field(default=500, ge=1)
    #: How long the broker holds a fetch of the frames topic that finds no new frames.
    #: One fetch is in flight per broker, so a busy partition's next fetch waits behind
    #: one of idle partitions: short keeps latency low when cameras' rates differ (Kafka's
    #: default of 500 ms added about 340 ms), at the cost of a fetch request this often
    #: while the topic is idle.
    fetch_max_wait_ms: int = Field(default=50, ge=1, le=500)
    max_inflight_batches: int = Field(default=2, ge=1, le=16)
    #: What the processor sends the model replicas: pixels, or the checked encoded frame.
    model_input: ModelInput = ModelInput.DECODED
    #: Where the models run: deployments of their own, or inside each processor replica.
    model_hosting: ModelHosting = ModelHosting.DEPLOYMENTS
    max_frame_bytes: int = Field(default=FrameLimits().max_bytes, ge=1)
    max_frame_pixels: int = Field(default=FrameLimits().max_pixels, ge=1)
    model_timeout_s: float = Field(default=60.0, gt=0)
    produce_timeout_s: float = Field(default=30.0, gt=0)
    #: A batch that fails this many times in a row, in any stage (model, produce, result
    #: assembly), is re-run one frame at a time: the frames that fail alone are
    #: dead-lettered with the stage's reason and the others get their results.
    #: (``max_model_retries`` is the name it had before.)
    max_batch_retries: int = Field(
        default=3, ge=1, validation_alias=AliasChoices("max_batch_retries", "max_model_retries")
    )
    #: How far ahead of the processor's clock a capture time may be (camera clock skew).
    max_future_ms: int = Field(default=FrameLimits().max_future_ms, ge=0)
    #: More loop restarts than this within ``restart_window_s`` fail the replica's health
    #: check, so Serve replaces it (a crash loop is never silent).
    max_loop_restarts: int = Field(default=5, ge=1)
    restart_window_s: float = Field(default=300.0, gt=0)
    num_cpus: float = Field(default=0.5, gt=0)
    #: Custom Ray resources the processor replica needs (``node:__internal_head__``: the head).
    ray_resources: dict[str, float] = Field(default_factory=dict)
    #: CPU niceness of the processor's threads. The model replicas set throughput; a
    #: niced processor yields a shared core to them and still gets every idle cycle.
    niceness: int = Field(default=10, ge=0, le=19)

    @property
    def limits(self) -> FrameLimits:
        return FrameLimits(self.max_frame_bytes, self.max_frame_pixels, self.max_future_ms)


class ActiveLearningSettings(_Strict):
    enabled: bool = False
    score_threshold: float = Field(default=0.4, ge=0, le=1)
    max_per_minute: int = Field(default=30, ge=0)


class PipelineConfig(_Strict):
    bootstrap: str = Field(default_factory=lambda: LocalSettings().bootstrap_servers)
    topics: Topics = Topics()
    processor: ProcessorSettings = ProcessorSettings()
    models: dict[Task, ModelConfig] = {}
    cameras: CameraRouting = CameraRouting()
    active_learning: ActiveLearningSettings = ActiveLearningSettings()
    #: Model registry root (default: LocalSettings.registry_dir).
    registry_dir: str | None = None
    #: Deployed only where its models' weights load without training (torchvision's
    #: pretrained weights in torch's cache, or downloadable): `vlm serve`, `vlm demo` and
    #: the Helm chart skip it otherwise and say why. Ray's own `serve run` deploys it always.
    optional: bool = False

    @model_validator(mode="after")
    def _check(self) -> PipelineConfig:
        if not self.models:
            raise ValueError("at least one model is needed under 'models'")
        for task, model in self.models.items():
            spec = model.model_spec()
            if spec.task is not task:
                raise ValueError(f"models.{task.value} has a {spec.task.value} spec")
            if model.deployment.max_batch_size < self.processor.batch_size:
                raise ValueError(
                    f"models.{task.value}.deployment.max_batch_size ({model.deployment.max_batch_size}) must be "
                    f">= processor.batch_size ({self.processor.batch_size}): one request carries a whole batch"
                )
            scaled = model.deployment.min_replicas != 1 or model.deployment.max_replicas != 1
            if self.processor.model_hosting is ModelHosting.PROCESSOR and scaled:
                raise ValueError(
                    f"models.{task.value}.deployment: min_replicas and max_replicas do not apply with "
                    "processor.model_hosting 'processor', where each processor replica holds one copy: "
                    "scale with processor.replicas, or host the models in deployments"
                )
        return self

    @classmethod
    def parse(cls, args: dict[str, Any], *, source: str = "pipeline args") -> PipelineConfig:
        try:
            return cls.model_validate(args)
        except ValidationError as exc:
            where, problem = first_error(exc)
            raise ConfigError(f"{source}: {where}: {problem}", hint="see deploy/serve/pipeline.yaml") from None
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}", hint=exc.hint) from None


def load_serve_config(path: str | Path) -> dict[str, Any]:
    """Read a Serve config file (the format of ``serve deploy``)."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"pipeline config {path} does not exist", hint="see deploy/serve/pipeline.yaml") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(doc, dict) or not doc.get("applications"):
        raise ConfigError(f"{path} has no 'applications' list", hint="it must be a Ray Serve config file")
    return doc


def serve_applications(serve_config: dict[str, Any], *, source: str = "the Serve config") -> dict[str, dict[str, Any]]:
    """Every application's builder args by name, in file order. A camera ``served_by`` an
    application that the file does not hold is a mistake, named here."""
    apps = {app.get("name", "vlm"): copy.deepcopy(dict(app.get("args") or {})) for app in serve_config["applications"]}
    for name, args in apps.items():
        for camera, policy in _overrides(args).items():
            owner = policy.get("served_by") if isinstance(policy, dict) else None
            if owner is not None and (owner not in apps or owner == name):
                raise ConfigError(
                    f"{source}: application {name!r}: cameras.overrides.{camera}.served_by names {owner!r}, "
                    f"which is not another application of the file ({', '.join(apps)})",
                    hint="name an application of the same Serve config, or remove the override",
                )
    return apps


def without_applications(apps: dict[str, dict[str, Any]], skipped: set[str]) -> dict[str, dict[str, Any]]:
    """``apps`` less ``skipped``; the cameras those served go back to the default policy of
    the applications that remain."""
    kept: dict[str, dict[str, Any]] = {}
    for name, args in apps.items():
        if name in skipped:
            continue
        args = copy.deepcopy(args)
        overrides = _overrides(args)
        for camera in [c for c, p in overrides.items() if isinstance(p, dict) and p.get("served_by") in skipped]:
            del overrides[camera]
        kept[name] = args
    return kept


def _overrides(args: dict[str, Any]) -> dict[str, Any]:
    cameras = args.get("cameras")
    overrides = cameras.get("overrides") if isinstance(cameras, dict) else None
    return overrides if isinstance(overrides, dict) else {}


def model_pipeline_args(
    bootstrap: str,
    topics: Topics,
    task: Task,
    model: dict[str, Any],
    *,
    processor: dict[str, Any] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Builder args for a pipeline of one model on the given topics, every camera routed to
    it: what the bench and the tests deploy. ``overrides`` replace top-level blocks; dict
    blocks (``processor``, ``cameras``...) are merged into the defaults."""
    args: dict[str, Any] = {
        "bootstrap": bootstrap,
        "topics": topics.model_dump(),
        "processor": dict(processor or {}),
        "models": {task.value: model},
        "cameras": {"default": {"tasks": [task.value]}},
    }
    for key, value in overrides.items():
        base = args.get(key)
        args[key] = {**base, **value} if isinstance(value, dict) and isinstance(base, dict) else value
    return args
