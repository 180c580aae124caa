"""The model registry: versions of named models, their metrics, and which one serves.

Layout under the root (a local directory by default)::

    <name>/v<N>/model.safetensors   weights
    <name>/v<N>/version.json        ModelVersion metadata
    <name>/production.json          {"version": N, "history": [...]} the serving pointer

Every write goes to a temporary file or directory first and is renamed into place, so a
reader never sees half a version and a crash never leaves a broken pointer.
"""

from __future__ import annotations

import enum
import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from vlm_core.contracts.task import Task
from vlm_core.errors import ConfigError, VlmError
from vlm_core.models.spec import ModelSpec, Optimization
from vlm_core.models.weights import save_state_dict, sha256_file


class RegistryError(VlmError):
    """A model name or version does not exist, or the registry is inconsistent."""


class ModelStatus(str, enum.Enum):
    CANDIDATE = "candidate"
    PRODUCTION = "production"
    ARCHIVED = "archived"


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: int
    task: Task
    arch: str
    class_names: tuple[str, ...]
    weights_file: str
    weights_sha256: str
    metrics: dict[str, float] = field(default_factory=dict)
    primary_metric: str = ""
    dataset_hash: str = ""
    parent: int | None = None
    created_at: str = ""
    status: ModelStatus = ModelStatus.CANDIDATE
    status_reason: str = ""
    #: The square input side the model was trained at (classification, segmentation).
    input_size: int | None = None
    #: Made by ``vlm optimize`` from ``parent`` with this method (None: trained).
    optimization: Optimization | None = None

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def spec(self, root: Path, **overrides: Any) -> ModelSpec:
        overrides.setdefault("input_size", self.input_size)
        return ModelSpec(
            task=self.task,
            arch=self.arch,
            weights=str(_version_dir(root, self.name, self.version) / self.weights_file),
            class_names=self.class_names,
            name=self.name,
            version=str(self.version),
            optimization=self.optimization,
            **overrides,
        )

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["task"] = self.task.value
        doc["status"] = self.status.value
        doc["class_names"] = list(self.class_names)
        doc["optimization"] = self.optimization.value if self.optimization else None
        return doc

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> ModelVersion:
        values = dict(doc)
        values["task"] = Task(values["task"])
        if values.get("optimization") is not None:
            values["optimization"] = Optimization(values["optimization"])
        values["status"] = ModelStatus(values["status"])
        values["class_names"] = tuple(values["class_names"])
        return cls(**values)


@dataclass(frozen=True)
class GateCheck:
    """One evaluation set of the gate, scored for both versions on the same samples: the
    candidate passes when it scores at least production's plus ``min_delta`` (a negative
    ``min_delta`` is the loss tolerated on a domain that must not get worse)."""

    domain: str
    metric: str
    candidate: float
    production: float | None
    min_delta: float = 0.0

    @property
    def passed(self) -> bool:
        return self.production is None or self.candidate >= self.production + self.min_delta

    def describe(self) -> str:
        if self.production is None:
            return f"{self.domain}: {self.metric} {self.candidate:.4f}"
        sign = ">=" if self.passed else "<"
        return (
            f"{self.domain}: {self.metric} {self.candidate:.4f} {sign} production {self.production:.4f} "
            f"{self.min_delta:+.4f}"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "domain": self.domain,
            "metric": self.metric,
            "candidate": self.candidate,
            "production": self.production,
            "min_delta": self.min_delta,
            "passed": self.passed,
        }


@dataclass(frozen=True)
class PromotionDecision:
    promoted: bool
    candidate: ModelVersion
    production: ModelVersion | None
    candidate_score: float | None
    production_score: float | None
    reason: str
    checks: tuple[GateCheck, ...] = ()


def parse_ref(ref: str) -> tuple[str, int | None]:
    """``name`` or ``name@version``."""
    name, _, version = ref.partition("@")
    if not name:
        raise ConfigError(f"bad model reference {ref!r}", hint="use NAME or NAME@VERSION")
    if not version:
        return name, None
    if not version.isdigit():
        raise ConfigError(f"bad model version in {ref!r}", hint="versions are integers, e.g. detector@3")
    return name, int(version)


class ModelRegistry:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()

    # -- reading ------------------------------------------------------------------------
    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def versions(self, name: str) -> list[ModelVersion]:
        model_dir = self.root / name
        if not model_dir.is_dir():
            return []
        found = []
        for path in model_dir.glob("v*/version.json"):
            found.append(ModelVersion.from_json(json.loads(path.read_text())))
        return sorted(found, key=lambda v: v.version)

    def get(self, name: str, version: int | None = None) -> ModelVersion:
        if version is None:
            production = self.production(name)
            if production is not None:
                return production
            versions = self.versions(name)
            if not versions:
                raise RegistryError(f"no model named {name!r} in {self.root}", hint="see `vlm models list`")
            return versions[-1]
        path = _version_dir(self.root, name, version) / "version.json"
        if not path.is_file():
            raise RegistryError(f"{name}@{version} does not exist in {self.root}", hint="see `vlm models list`")
        return ModelVersion.from_json(json.loads(path.read_text()))

    def resolve(self, ref: str) -> ModelVersion:
        return self.get(*parse_ref(ref))

    def production(self, name: str) -> ModelVersion | None:
        pointer = self._pointer(name)
        return self.get(name, pointer["version"]) if pointer.get("version") is not None else None

    def version_dir(self, version: ModelVersion) -> Path:
        return _version_dir(self.root, version.name, version.version)

    def weights_path(self, version: ModelVersion) -> Path:
        return self.version_dir(version) / version.weights_file

    # -- writing ------------------------------------------------------------------------
    def register(
        self,
        name: str,
        *,
        task: Task,
        arch: str,
        class_names: tuple[str, ...],
        state_dict: Mapping[str, torch.Tensor],
        metrics: Mapping[str, float],
        primary_metric: str,
        dataset_hash: str = "",
        parent: int | None = None,
        input_size: int | None = None,
        artifacts: Mapping[str, Path] | None = None,
        optimization: Optimization | None = None,
    ) -> ModelVersion:
        """Store a new candidate version. ``artifacts`` (name -> file) are copied next to
        the weights: training curves, confusion matrices."""
        if primary_metric not in metrics:
            raise ConfigError(f"primary metric {primary_metric!r} is not among the metrics {sorted(metrics)}")
        model_dir = self.root / name
        model_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=model_dir))
        try:
            digest = save_state_dict(state_dict, staging / "model.safetensors")
            version_no = self._last_version(name) + 1
            version = ModelVersion(
                name=name,
                version=version_no,
                task=task,
                arch=arch,
                class_names=tuple(class_names),
                weights_file="model.safetensors",
                weights_sha256=digest,
                metrics={k: float(v) for k, v in metrics.items()},
                primary_metric=primary_metric,
                dataset_hash=dataset_hash,
                parent=parent,
                created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                input_size=input_size,
                optimization=optimization,
            )
            for artifact, source in (artifacts or {}).items():
                shutil.copyfile(source, staging / artifact)
            _write_json(staging / "version.json", version.to_json())
            staging.rename(_version_dir(self.root, name, version_no))  # atomic on one filesystem
            _write_json(model_dir / LAST_VERSION_FILE, {"version": version_no})
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return version

    def verify(self, version: ModelVersion) -> None:
        path = self.weights_path(version)
        if not path.is_file() or sha256_file(path) != version.weights_sha256:
            raise RegistryError(f"weights of {version.ref} are missing or do not match their sha256")

    def promote(
        self,
        name: str,
        version: int,
        *,
        candidate_score: float | None = None,
        production_score: float | None = None,
        margin: float = 0.0,
        force: bool = False,
        checks: Sequence[GateCheck] = (),
    ) -> PromotionDecision:
        """The promotion gate: the candidate serves only if its primary metric, on the
        production model's evaluation set, is at least production's plus ``margin``; with
        ``checks`` (one per evaluation domain), only if it passes every one of them.

        Without explicit scores the stored metrics of both versions are compared.
        A refused candidate stays a candidate with the reason recorded.
        """
        candidate = self.get(name, version)
        self.verify(candidate)
        production = self.production(name)
        if production is not None and production.version == candidate.version:
            return PromotionDecision(False, candidate, production, None, None, f"{candidate.ref} already serves")
        metric = candidate.primary_metric
        cand = candidate_score if candidate_score is not None else candidate.metrics.get(metric)
        prod = None
        if production is not None:
            prod = production_score if production_score is not None else production.metrics.get(metric)
        if production is None or force:
            reason = "forced" if force and production is not None else "no production version yet"
            promoted = True
        elif checks:
            promoted = all(check.passed for check in checks)
            reason = "; ".join(check.describe() for check in checks)
        elif cand is None or prod is None:
            promoted, reason = False, f"{metric} is missing for {candidate.ref} or {production.ref}"
        elif cand >= prod + margin:
            promoted, reason = True, f"{metric} {cand:.4f} >= production {prod:.4f} + margin {margin:.4f}"
        else:
            promoted, reason = False, f"{metric} {cand:.4f} < production {prod:.4f} + margin {margin:.4f}"
        if promoted:
            if production is not None:
                self._set_status(production, ModelStatus.ARCHIVED, f"replaced by v{candidate.version}")
            candidate = self._set_status(candidate, ModelStatus.PRODUCTION, reason)
            self._write_history(name, [*self.rollback_history(name), candidate.version])
        else:
            candidate = self._set_status(candidate, ModelStatus.CANDIDATE, f"refused: {reason}")
        return PromotionDecision(promoted, candidate, production, cand, prod, reason, tuple(checks))

    def rollback(self, name: str) -> ModelVersion:
        """Serve the previous production version again."""
        history = self.rollback_history(name)
        if len(history) < 2:
            raise RegistryError(f"{name} has no earlier production version to roll back to")
        current, previous = history[-1], history[-2]
        self._set_status(self.get(name, current), ModelStatus.ARCHIVED, f"rolled back to v{previous}")
        restored = self._set_status(self.get(name, previous), ModelStatus.PRODUCTION, f"rollback from v{current}")
        self._write_history(name, history[:-1])
        return restored

    def kept_for(self, name: str) -> dict[int, str]:
        """The versions of ``name`` that may not be deleted, and why: production, every
        earlier production version (a rollback serves them again), and the parent of any
        other version (its lineage: an optimised version's accuracy is against it)."""
        return {number: why for number, (why, _hint) in self._kept(name).items()}

    def delete(self, version: ModelVersion) -> int:
        """Delete one version (its weights, record and artifacts); returns the bytes freed.
        Its number is never given out again. Refused for the versions :meth:`kept_for`
        names; a version a pipeline config pins by number is the config's to drop first."""
        kept = self._kept(version.name).get(version.version)
        if kept is not None:
            why, hint = kept
            raise RegistryError(f"{version.ref} is {why}", hint=hint)
        folder = self.version_dir(version)
        if not folder.is_dir():
            raise RegistryError(f"{version.ref} does not exist in {self.root}", hint="see `vlm models list`")
        freed = sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())
        recorded = self._recorded_last_version(version.name)
        if version.version > recorded:  # the file plus the versions left cover every number given
            _write_json(self.root / version.name / LAST_VERSION_FILE, {"version": version.version})
        # Out of sight first, so that no reader ever lists half a version.
        doomed = Path(tempfile.mkdtemp(prefix=f".deleting-v{version.version}-", dir=self.root / version.name))
        folder.rename(doomed / folder.name)
        shutil.rmtree(doomed)
        return freed

    def prune_plan(self, name: str, keep: int, rollback_depth: int | None = None) -> list[ModelVersion]:
        """The versions of ``name`` that :meth:`prune` deletes: all except production, the
        earlier production versions (only the latest ``rollback_depth`` of them, when
        given), the newest ``keep`` of the others, and the parents (and theirs) of every
        version that stays."""
        if keep < 0:
            raise ConfigError(f"keep must be at least 0, got {keep}")
        versions = self.versions(name)
        if not versions:
            raise RegistryError(f"no model named {name!r} in {self.root}", hint="see `vlm models list`")
        by_number = {v.version: v for v in versions}
        staying = set(self.rollback_history(name, rollback_depth))
        free = [v.version for v in versions if v.version not in staying]
        staying.update(free[max(0, len(free) - keep) :] if keep else [])
        pending = list(staying)
        while pending:  # lineage: the parents of what stays stay too
            child = by_number.get(pending.pop())
            parent = child.parent if child is not None else None
            if parent is not None and parent in by_number and parent not in staying:
                staying.add(parent)
                pending.append(parent)
        return [v for v in versions if v.version not in staying]

    def prune(self, name: str, keep: int, rollback_depth: int | None = None) -> list[tuple[ModelVersion, int]]:
        """Delete the versions :meth:`prune_plan` names, newest first (so that each one's
        children are gone before it); returns each with the bytes freed. With
        ``rollback_depth``, the rollback history first loses all but its latest
        ``rollback_depth`` earlier production versions (``vlm models rollback`` goes back
        that far, no further)."""
        doomed = self.prune_plan(name, keep, rollback_depth)
        kept = self.rollback_history(name, rollback_depth)
        if len(kept) < len(self.rollback_history(name)):
            self._write_history(name, kept)
        return [(version, self.delete(version)) for version in reversed(doomed)]

    def rollback_history(self, name: str, depth: int | None = None) -> list[int]:
        """The production versions of ``name`` in the order they were promoted, the one that
        serves last (what ``vlm models rollback`` walks back through); with ``depth``, only
        production and the latest ``depth`` before it."""
        if depth is not None and depth < 0:
            raise ConfigError(f"rollback depth must be at least 0, got {depth}")
        history = [int(number) for number in self._pointer(name).get("history", [])]
        return history if depth is None else history[max(0, len(history) - depth - 1) :]

    # -- helpers ------------------------------------------------------------------------
    def _kept(self, name: str) -> dict[int, tuple[str, str]]:
        """:meth:`kept_for`'s reasons, each with what would free the version."""
        kept: dict[int, tuple[str, str]] = {}
        history = self.rollback_history(name)
        for earlier in history[:-1]:
            kept[earlier] = (
                "an earlier production version (rollback)",
                f"`vlm models prune {name} --rollback-depth N` keeps only the latest N for rollback",
            )
        if history:
            kept[history[-1]] = ("production", f"promote another version of {name} first")
        for version in self.versions(name):
            if version.parent is not None and version.parent not in kept:
                kept[version.parent] = (f"the parent of v{version.version}", f"delete {version.ref} first")
        return kept

    def _last_version(self, name: str) -> int:
        """The highest version number ``name`` ever had, deleted ones included."""
        return max([self._recorded_last_version(name), *(v.version for v in self.versions(name))])

    def _recorded_last_version(self, name: str) -> int:
        """What ``last_version.json`` holds (0 in a registry from before it existed)."""
        path = self.root / name / LAST_VERSION_FILE
        return int(json.loads(path.read_text())["version"]) if path.is_file() else 0

    def _write_history(self, name: str, history: list[int]) -> None:
        """The production pointer: the last of ``history`` serves, the rest are rollback's."""
        _write_json(self.root / name / "production.json", {"version": history[-1], "history": history})

    def _pointer(self, name: str) -> dict[str, Any]:
        path = self.root / name / "production.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def _set_status(self, version: ModelVersion, status: ModelStatus, reason: str) -> ModelVersion:
        updated = replace(version, status=status, status_reason=reason)
        _write_json(self.version_dir(version) / "version.json", updated.to_json())
        return updated


#: Beside a model's versions: the highest number it gave out, so that none is given twice.
LAST_VERSION_FILE = "last_version.json"


def _version_dir(root: Path, name: str, version: int) -> Path:
    return root / name / f"v{version}"


def _write_json(path: Path, doc: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        json.dump(doc, fh, indent=2, sort_keys=True)
        fh.write("\n")
    os.replace(tmp, path)


#: ModelSpec fields a deployment may set on top of what a registry version records.
SERVING_OVERRIDES = ("score_threshold", "top_k", "input_size", "max_detections")


@dataclass(frozen=True)
class RegistryFollow:
    """A deployment that serves ``name``'s production version and switches when it changes."""

    root: str
    name: str
    poll_s: float = 5.0
    #: Serving fields (SERVING_OVERRIDES) the pipeline config set on top of the version's own.
    overrides: Mapping[str, Any] = field(default_factory=dict)

    def spec(self) -> ModelSpec:
        return production_spec(self.root, self.name, self.overrides)


def production_spec(root: str | Path, name: str, base: Mapping[str, Any] | None = None) -> ModelSpec:
    """The ModelSpec of ``name``'s production version, with serving thresholds from ``base``."""
    registry = ModelRegistry(root)
    version = registry.production(name)
    if version is None:
        raise RegistryError(
            f"{name!r} has no production version in {registry.root}",
            hint=f"promote one with `vlm models promote {name}@N`",
        )
    overrides = {k: base[k] for k in SERVING_OVERRIDES if base and base.get(k) is not None}
    return version.spec(registry.root, **overrides)
