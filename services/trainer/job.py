"""``vlm train``: Ray Train (TorchTrainer, DDP) -> evaluation -> registry -> promotion gate.

The per-worker loop builds the data from its URI, trains with DDP over ``workers``
processes, and reports one checkpoint per epoch to Ray Train's storage; ``FailureConfig``
restarts a failed worker group from the latest checkpoint. Rank 0 streams progress to
the driver through a Ray queue, which the CLI shows as a progress bar. After training,
the model is evaluated on the held-out split through the serving Predictor, registered
as a candidate with its metrics, curves and (classification) confusion matrix, and with
``promote`` passed through the gate. With a ``teacher`` it is distilled: the loss also
matches the teacher's outputs, and the version is the teacher's ``distill`` child, measured
against it (accuracy on the same samples, and the speed-up).
"""

from __future__ import annotations

import contextlib
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from vlm_core.contracts.snapshot import SnapshotManifest, is_snapshot
from vlm_core.contracts.task import Task
from vlm_core.errors import ConfigError
from vlm_core.models.spec import Optimization
from vlm_core.tasks import get_profile

#: Architectures whose backbone is MobileNetV2: `--init auto` starts them from ImageNet.
MOBILENET_V2_BACKBONES = ("mobilenet_v2", "fasterrcnn_mobilenet_v2", "lraspp_mobilenet_v2")
VALIDATION_LIMIT = 2000


@dataclass(frozen=True)
class GateDomain:
    """``--gate NAME:DELTA=URI``: an evaluation set the candidate and production are both
    scored on; the candidate must reach production's score plus DELTA on it (+0.02: better by
    two points; -0.05: at most five points worse)."""

    name: str
    min_delta: float
    data: str

    @classmethod
    def parse(cls, text: str) -> GateDomain:
        head, sep, data = text.partition("=")
        name, colon, delta = head.partition(":")
        hint = "use NAME:DELTA=URI, e.g. drifted:+0.05=scenes://?style=negative&n=200"
        if not sep or not colon or not name or not data:
            raise ConfigError(f"bad --gate {text!r}", hint=hint)
        try:
            return cls(name, float(delta), data)
        except ValueError:
            raise ConfigError(f"bad --gate {text!r}: {delta!r} is not a number", hint=hint) from None


@dataclass(frozen=True)
class TrainRequest:
    task: Task
    data: str
    arch: str | None = None
    init: str = "auto"
    workers: int = 2
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    input_size: int | None = None
    #: Segmentation: train on random crops of this side of the resized input.
    crop_size: int | None = None
    name: str | None = None
    seed: int = 0
    validation_fraction: float = 0.1
    shuffle_labels: bool = False
    promote: bool = False
    margin: float = 0.0
    #: With ``promote``: gate on these domains instead of the held-out split alone.
    gates: tuple[GateDomain, ...] = ()
    #: Rehearsal: the first ``replay_samples`` training samples of this data are added to
    #: the training split, so that a fine-tune on new labels keeps what the model knew.
    replay: str | None = None
    replay_samples: int = 500
    eval_limit: int | None = None
    torch_threads: int = 1
    #: Distillation: the teacher's ModelSpec (``ModelVersion.spec(...).to_dict()``). The
    #: version is registered as its ``distill`` child, with the speed-up measured here.
    teacher: dict[str, Any] | None = None
    distill_weight: float = 0.7
    temperature: float = 4.0
    #: ``init`` is a pruned state (``vlm optimize --method prune``): the network takes its
    #: widths and is fine-tuned whole, and the version is registered as ``prune``.
    pruned: bool = False

    def resolved(self) -> TrainRequest:
        """Fill every unset option with the task's default."""
        if self.workers < 1:
            raise ConfigError("--workers must be at least 1")
        if self.gates and not self.promote:
            raise ConfigError("--gate decides a promotion", hint="add --promote, or leave out --gate")
        profile = get_profile(self.task)
        if self.crop_size is not None and not profile.trains_on_crops:
            raise ConfigError(f"--crop-size does not apply to {self.task.value} training")
        if self.teacher is not None:
            self._check_teacher(self.teacher)
        if self.pruned and self.init in ("auto", "none", ""):
            raise ConfigError("a pruned fine-tune starts from the pruned weights", hint="give them as init")
        defaults = profile.training_defaults(self.data)
        arch = self.arch or defaults.training_arch
        return replace(
            self,
            arch=arch,
            epochs=self.epochs or defaults.epochs,
            batch_size=self.batch_size or defaults.batch_size,
            lr=self.lr or defaults.lr,
            input_size=self.input_size or defaults.training_input_size,
            name=self.name or (self.teacher or {}).get("name") or default_model_name(self.task, self.data),
            init=self.init if self.init != "auto" else default_init(arch),
        )

    def _check_teacher(self, teacher: dict[str, Any]) -> None:
        if not get_profile(self.task).distills:
            raise ConfigError(
                f"{self.task.value} training cannot distil a teacher: its outputs are not class scores",
                hint="distil classifiers and segmenters",
            )
        if teacher.get("task") != self.task.value:
            raise ConfigError(f"the teacher {teacher.get('name')} is not a {self.task.value} model")
        if teacher.get("optimization") not in (None, Optimization.DISTILL.value):
            raise ConfigError(
                f"the teacher {teacher.get('name')}@{teacher.get('version')} is {teacher.get('optimization')}-"
                "compressed",
                hint="distil from the float version it was made from",
            )
        if not 0.0 < self.distill_weight <= 1.0 or self.temperature <= 0:
            raise ConfigError("--distill-weight must be in (0, 1] and --temperature above 0")

    def check_teacher_classes(self, class_names: Sequence[str]) -> None:
        if self.teacher is not None and tuple(self.teacher.get("class_names", ())) != tuple(class_names):
            raise ConfigError(
                f"the teacher {self.teacher.get('name')} predicts other classes than {self.data} has",
                hint="distil on the data the teacher was trained on",
            )

    def check_gates(self) -> None:
        """Open every gate domain's data now, so that a typo fails before training does."""
        from vlm_core.training.data import load_training_data

        for domain in self.gates:
            load_training_data(domain.data, self.task, seed=self.seed)

    def load_data(self) -> Any:
        from vlm_core.training.data import load_training_data, with_replay

        data = load_training_data(
            self.data,
            self.task,
            validation_fraction=self.validation_fraction,
            seed=self.seed,
            shuffle_labels=self.shuffle_labels,
        )
        if self.replay is None:
            return data
        return with_replay(data, load_training_data(self.replay, self.task, seed=self.seed), self.replay_samples)


def default_model_name(task: Task, data: str) -> str:
    noun = get_profile(task).noun
    if is_snapshot(Path(data)):
        source = SnapshotManifest.read(Path(data)).dataset
    elif "://" in data or data.startswith(("coco:", "voc:")):
        source = data.split("://")[0].split(":")[0]
    else:
        source = data
    slug = "".join(c if c.isalnum() else "-" for c in Path(source).name.lower()).strip("-") or "data"
    return f"{slug}-{noun}"


@dataclass
class TrainOutcome:
    request: TrainRequest
    version: Any  # ModelVersion
    metrics: dict[str, float]
    history: list[dict[str, float]]
    wall_s: float
    train_s: float
    checkpoint_path: str
    decision: Any = None  # PromotionDecision when promote was asked
    artifacts: dict[str, str] = field(default_factory=dict)
    #: With a teacher: the teacher's scores and both models' timing passes (a Comparison).
    comparison: Any = None


# -- the per-worker loop (runs inside Ray Train workers) --------------------------------
def train_loop_per_worker(config: dict[str, Any]) -> None:
    import os

    import ray.train
    import ray.train.torch
    import torch

    from vlm_core.models import ModelSpec, build_model, get_architecture
    from vlm_core.tasks import Distillation, TrainingInput
    from vlm_core.training.data import Subset
    from vlm_core.training.loops import TorchDataset, TrainSettings, collate, training_loss, validation_counts

    request = TrainRequest(**{**config["request"], "task": Task(config["request"]["task"])})
    torch.set_num_threads(request.torch_threads)
    torch.manual_seed(request.seed)
    context = ray.train.get_context()
    rank = context.get_world_rank()
    progress = config.get("progress")
    if progress is not None:
        progress.put_nowait({"event": "worker", "rank": rank, "pid": os.getpid(), "node": context.get_node_rank()})
    data = request.load_data()
    if request.pruned:
        spec = ModelSpec(
            request.task, request.arch or "", request.init, data.class_names, optimization=Optimization.PRUNE
        )
    else:
        spec = ModelSpec(request.task, request.arch or "", class_names=data.class_names, **init_weights(request.init))
    model, _ = build_model(spec)
    shape = TrainingInput(request.input_size, request.crop_size, get_architecture(spec.arch).crop_fraction)
    set_batchnorm_momentum(model, BATCHNORM_MOMENTUM)
    model = ray.train.torch.prepare_model(model)
    settings = TrainSettings(
        request.task, request.epochs or 1, request.batch_size or 1, request.lr or 1e-3, request.input_size
    )
    loader = torch.utils.data.DataLoader(
        TorchDataset(data.train, request.task, shape, train=True),
        batch_size=settings.batch_size,
        shuffle=True,
        drop_last=len(data.train) > settings.batch_size * context.get_world_size(),
        collate_fn=collate(request.task),
    )
    distillation = None
    if request.teacher is not None:
        teacher_spec = ModelSpec.from_dict(request.teacher)
        teacher, _ = build_model(teacher_spec)
        teacher.eval().requires_grad_(False).to(ray.train.torch.get_device())
        distillation = Distillation(teacher, teacher_spec.input_size, request.distill_weight, request.temperature)
    moves_batches = get_profile(request.task).loader_moves_batches
    loader = ray.train.torch.prepare_data_loader(loader, move_to_device=moves_batches)
    # Each worker validates every world-size-th sample and the counts are summed: the
    # workers share the per-epoch validation instead of waiting for rank 0 to do it alone.
    world = context.get_world_size()
    val_samples = Subset(data.validation, range(rank, min(len(data.validation), VALIDATION_LIMIT), world))
    val_loader = torch.utils.data.DataLoader(
        TorchDataset(val_samples, request.task, shape, train=False),
        batch_size=settings.batch_size,
        collate_fn=collate(request.task),
    )
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    steps = settings.epochs * max(1, len(loader))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=settings.lr, total_steps=steps, pct_start=0.15)
    start_epoch, history = 0, []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = torch.load(Path(directory) / "state.pt", weights_only=True, map_location="cpu")
        _unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, history = int(state["epoch"]) + 1, list(state["history"])
        if rank == 0 and progress is not None:
            progress.put_nowait({"event": "resumed", "epoch": start_epoch})
    device = ray.train.torch.get_device()
    for epoch in range(start_epoch, settings.epochs):
        if hasattr(loader, "sampler") and hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        model.train()
        total, batches, started = 0.0, 0, time.perf_counter()
        for step, batch in enumerate(loader):
            if not moves_batches:  # lists of tensors (detection): the loader cannot move them
                batch = _to_device(batch, device)
            loss = training_loss(model, request.task, batch, settings, distillation)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += float(loss.detach())
            batches += 1
            if rank == 0 and progress is not None and step % 10 == 0:
                progress.put_nowait(
                    {"event": "step", "epoch": epoch, "step": step + 1, "steps": len(loader), "loss": total / batches}
                )
        metrics: dict[str, float] = {"epoch": epoch + 1, "train_loss": total / max(1, batches)}
        metrics["epoch_s"] = time.perf_counter() - started
        val_batches = (_to_device(batch, device) for batch in val_loader)
        counts = validation_counts(_unwrap(model), request.task, val_batches, len(data.class_names))
        if world > 1:
            counts = counts.to(device)
            torch.distributed.all_reduce(counts)
        metrics.update(get_profile(request.task).validation_metrics(counts.cpu()))
        history.append(metrics)
        with tempfile.TemporaryDirectory() as directory:
            saved = None
            if rank == 0:
                torch.save(
                    {
                        "model": _unwrap(model).state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "epoch": epoch,
                        "history": history,
                    },
                    Path(directory) / "state.pt",
                )
                saved = ray.train.Checkpoint.from_directory(directory)
            ray.train.report(metrics, checkpoint=saved)
        if rank == 0 and progress is not None:  # after report: the epoch's checkpoint is stored
            progress.put_nowait({"event": "epoch", **metrics})


#: torchvision's MobileNetV3 builds BatchNorm with momentum 0.01, tuned for 600-epoch
#: ImageNet runs; over a few epochs the running statistics lag the weights so far that
#: eval mode scores at chance. 0.1 (PyTorch's default) tracks short runs.
BATCHNORM_MOMENTUM = 0.1


def set_batchnorm_momentum(model: Any, momentum: float) -> None:
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = momentum


def _unwrap(model: Any) -> Any:
    return model.module if hasattr(model, "module") else model


def _to_device(batch: Any, device: Any) -> Any:
    """Every tensor of a nested batch (lists, tuples, dicts) on ``device``."""
    if hasattr(batch, "to"):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return [_to_device(v, device) for v in batch]
    return batch


def default_init(arch: str) -> str:
    from vlm_core.models.weights import IMAGENET_MOBILENET_V2

    return IMAGENET_MOBILENET_V2 if arch in MOBILENET_V2_BACKBONES else "none"


def init_weights(init: str) -> dict[str, Any]:
    """``--init``: auto (ImageNet MobileNetV2 where the backbone is one, else random), none,
    or a checkpoint path / pkg:// URI (the CLI turns ``NAME@V`` into one). Every tensor of
    the same name and shape is copied, else an ImageNet classifier's backbone
    (:func:`vlm_core.models.zoo.load_initial_weights`)."""
    if init in ("none", ""):
        return {}
    if init == "pretrained":
        raise ConfigError(
            "--init pretrained needs torchvision's weights for the whole architecture with your classes",
            hint="pass an ImageNet checkpoint path (it initialises the backbone) or --init none",
        )
    return {"backbone_weights": init}


# -- the driver ---------------------------------------------------------------------------
def run_training(
    request: TrainRequest,
    *,
    ray_address: str,
    registry_dir: Path,
    storage: Path | str,
    on_progress: Callable[[dict[str, Any]], None] = lambda event: None,
    data: Any = None,
) -> TrainOutcome:
    """Train, evaluate, register (and with ``promote`` gate). ``data``: the request's
    TrainingData when the caller already loaded it to check it early."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Empty, Queue

    request = request.resolved()
    started = time.perf_counter()
    data = data if data is not None else request.load_data()
    request.check_teacher_classes(data.class_names)
    on_progress({"event": "data", "text": data.describe()})
    if not ray.is_initialized():
        ray.init(address=ray_address, logging_level="WARNING", log_to_driver=False)
    queue = Queue(actor_options={"num_cpus": 0})
    run_name = f"{request.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"request": {**asdict(request), "task": request.task.value}, "progress": queue},
        scaling_config=ScalingConfig(
            num_workers=request.workers,
            use_gpu=request.gpus_per_worker > 0,
            resources_per_worker={"CPU": request.cpus_per_worker, "GPU": request.gpus_per_worker},
        ),
        run_config=RunConfig(
            name=run_name,
            storage_path=str(storage),
            failure_config=FailureConfig(max_failures=3),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    done = threading.Event()
    outcome: dict[str, Any] = {}

    def fit() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as exc:  # surfaced on the driver thread below
            outcome["error"] = exc
        finally:
            done.set()

    train_started = time.perf_counter()
    threading.Thread(target=fit, name="ray-train-fit", daemon=True).start()
    while not done.is_set():
        with contextlib.suppress(Empty):
            on_progress(queue.get(timeout=0.5))
    while not queue.empty():
        on_progress(queue.get_nowait())
    train_s = time.perf_counter() - train_started
    if "error" in outcome:
        raise outcome["error"]
    result = outcome["result"]
    if result.checkpoint is None:
        raise RuntimeError("training finished without a checkpoint")
    return _finish(request, data, result.checkpoint, registry_dir, started, train_s, on_progress)


def _gate_check(
    domain: GateDomain,
    request: TrainRequest,
    class_names: tuple[str, ...],
    candidate: Any,
    incumbent: Any,
    on_progress: Callable[[dict[str, Any]], None],
) -> Any:
    """Score the candidate and production on the domain's held-out samples: a GateCheck."""
    from vlm_core.registry import GateCheck
    from vlm_core.training.data import load_training_data
    from vlm_core.training.evaluate import evaluate

    data = load_training_data(domain.data, request.task, seed=request.seed)
    if tuple(data.class_names) != tuple(class_names):
        raise ConfigError(
            f"--gate {domain.name}: {domain.data} has other classes than the training data",
            hint="gate on data labelled with the same classes",
        )
    on_progress({"event": "evaluate", "text": f"gate {domain.name}: scoring both versions on {domain.data}"})
    cand = evaluate(candidate, data.test, limit=request.eval_limit).primary
    prod = evaluate(incumbent, data.test, limit=request.eval_limit).primary if incumbent is not None else None
    return GateCheck(domain.name, get_profile(request.task).primary_metric, cand, prod, domain.min_delta)


def _finish(
    request: TrainRequest,
    data: Any,
    checkpoint: Any,
    registry_dir: Path,
    started: float,
    train_s: float,
    on_progress: Callable[[dict[str, Any]], None],
) -> TrainOutcome:
    import torch

    from vlm_core.models import ModelSpec
    from vlm_core.models.weights import save_state_dict
    from vlm_core.registry import ModelRegistry
    from vlm_core.tasks import build_predictor
    from vlm_core.training.evaluate import evaluate, evaluation_overrides, save_confusion_png, save_curves_png
    from vlm_core.training.optimize import compare_to_source

    with checkpoint.as_directory() as directory:
        state = torch.load(Path(directory) / "state.pt", weights_only=True, map_location="cpu")
        checkpoint_path = str(checkpoint.path)
    history = list(state["history"])
    registry = ModelRegistry(registry_dir)
    production = registry.production(request.name or "")
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "model.safetensors"
        save_state_dict(state["model"], weights)
        spec = ModelSpec(
            request.task,
            request.arch or "",
            weights=str(weights),
            class_names=data.class_names,
            name=request.name or "",
            version="candidate",
            input_size=request.input_size,
            optimization=Optimization.PRUNE if request.pruned else None,
            **evaluation_overrides(request.task),
        )
        predictor = build_predictor(spec)
        on_progress({"event": "evaluate", "text": f"evaluating on {len(data.test)} held-out samples"})
        evaluation = evaluate(
            predictor,
            data.test,
            limit=request.eval_limit,
            progress=lambda done, total: on_progress({"event": "eval_step", "done": done, "total": total}),
        )
        artifacts: dict[str, Path] = {}
        if history:
            artifacts["curves.png"] = save_curves_png(history, Path(tmp) / "curves.png", f"{request.name} training")
        if evaluation.confusion is not None and get_profile(request.task).confusion_artifact:
            artifacts["confusion.png"] = save_confusion_png(
                evaluation.confusion, data.class_names, Path(tmp) / "confusion.png", f"{request.name}: held-out"
            )
        metrics = {**evaluation.metrics, "eval_samples": float(evaluation.samples), "train_s": round(train_s, 1)}
        parent, optimization = (production.version if production else None), spec.optimization
        comparison = None
        if request.teacher is not None:
            teacher = ModelSpec.from_dict(request.teacher).with_(**evaluation_overrides(request.task))
            on_progress(
                {"event": "evaluate", "text": f"scoring and timing the teacher {teacher.name}@{teacher.version}"}
            )
            comparison = compare_to_source(
                build_predictor(teacher),
                predictor,
                data.test,
                limit=request.eval_limit,
                progress=lambda text: on_progress({"event": "evaluate", "text": text}),
            )
            metrics = comparison.version_metrics(metrics)
            parent, optimization = int(teacher.version), spec.optimization or Optimization.DISTILL
        version = registry.register(
            request.name or "",
            task=request.task,
            arch=request.arch or "",
            class_names=data.class_names,
            state_dict=state["model"],
            metrics=metrics,
            primary_metric=get_profile(request.task).primary_metric,
            dataset_hash=data.content_hash,
            parent=parent,
            input_size=request.input_size,
            artifacts=artifacts,
            optimization=optimization,
        )
    decision = None
    if request.promote:
        production_score = None
        incumbent = None
        if production is not None:
            on_progress({"event": "evaluate", "text": f"evaluating production {production.ref} on the same samples"})
            incumbent = build_predictor(production.spec(registry.root, **evaluation_overrides(request.task)))
            production_score = evaluate(incumbent, data.test, limit=request.eval_limit).primary
        checks = [
            _gate_check(domain, request, data.class_names, predictor, incumbent, on_progress)
            for domain in request.gates
        ]
        decision = registry.promote(
            version.name,
            version.version,
            candidate_score=evaluation.primary,
            production_score=production_score,
            margin=request.margin,
            checks=checks,
        )
        version = decision.candidate
    directory = registry.version_dir(version)
    return TrainOutcome(
        request,
        version,
        evaluation.metrics,
        history,
        time.perf_counter() - started,
        train_s,
        checkpoint_path,
        decision,
        {name: str(directory / name) for name in artifacts},
        comparison,
    )
