from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import register_classifier
from vlm_core.errors import ConfigError
from vlm_core.registry import ModelRegistry, ModelStatus, RegistryError, parse_ref
from vlm_core.tasks import build_predictor


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(tmp_path / "registry")


def test_register_records_everything_and_loads(registry: ModelRegistry) -> None:
    v1 = register_classifier(registry, 0.8)
    assert (v1.version, v1.status, v1.ref) == (1, ModelStatus.CANDIDATE, "cls@1")
    assert len(v1.weights_sha256) == 64 and v1.created_at
    stored = json.loads((registry.root / "cls" / "v1" / "version.json").read_text())
    assert stored["metrics"]["accuracy"] == 0.8 and stored["dataset_hash"] == "sha256:abc"
    registry.verify(v1)
    predictor = build_predictor(v1.spec(registry.root), device="cpu")
    assert predictor.model_ref.name == "cls" and predictor.model_ref.version == "1"
    assert not any(p.name.startswith(".staging") for p in (registry.root / "cls").iterdir())


def test_gate_promotes_better_and_refuses_worse(registry: ModelRegistry) -> None:
    register_classifier(registry, 0.80)
    first = registry.promote("cls", 1)
    assert first.promoted and registry.production("cls").version == 1  # type: ignore[union-attr]
    register_classifier(registry, 0.85, parent=1)
    better = registry.promote("cls", 2, margin=0.01)
    assert better.promoted and "0.8500 >= production 0.8000" in better.reason
    assert registry.get("cls", 1).status is ModelStatus.ARCHIVED
    register_classifier(registry, 0.10, parent=2)
    worse = registry.promote("cls", 3)
    assert not worse.promoted
    assert registry.production("cls").version == 2  # type: ignore[union-attr]
    refused = registry.get("cls", 3)
    assert refused.status is ModelStatus.CANDIDATE and refused.status_reason.startswith("refused: accuracy 0.1000")


def test_gate_uses_scores_on_the_production_eval_set(registry: ModelRegistry) -> None:
    register_classifier(registry, 0.9)
    registry.promote("cls", 1)
    register_classifier(registry, 0.99)  # high on its own split, but worse where production is judged
    decision = registry.promote("cls", 2, candidate_score=0.70, production_score=0.75)
    assert not decision.promoted and decision.production_score == 0.75


def test_rollback(registry: ModelRegistry) -> None:
    register_classifier(registry, 0.8)
    register_classifier(registry, 0.9)
    registry.promote("cls", 1)
    registry.promote("cls", 2)
    restored = registry.rollback("cls")
    assert restored.version == 1 and registry.production("cls").version == 1  # type: ignore[union-attr]
    assert registry.get("cls", 2).status is ModelStatus.ARCHIVED
    with pytest.raises(RegistryError):
        registry.rollback("cls")


def test_tampered_weights_are_not_promoted(registry: ModelRegistry) -> None:
    v1 = register_classifier(registry, 0.8)
    registry.weights_path(v1).write_bytes(b"tampered")
    with pytest.raises(RegistryError, match="sha256"):
        registry.promote("cls", 1)


def test_lookup_errors(registry: ModelRegistry) -> None:
    with pytest.raises(RegistryError):
        registry.resolve("nothing")
    register_classifier(registry, 0.5)
    assert registry.resolve("cls").version == 1
    with pytest.raises(RegistryError):
        registry.resolve("cls@9")
    with pytest.raises(ConfigError):
        parse_ref("cls@latest")
    assert parse_ref("det@3") == ("det", 3)


def test_models_cli(registry: ModelRegistry) -> None:
    import os
    import subprocess
    import sys

    register_classifier(registry, 0.8)
    register_classifier(registry, 0.6)
    env = {**os.environ, "VLM_REGISTRY_DIR": str(registry.root), "COLUMNS": "200"}

    def vlm(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "services.cli", "models", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    assert vlm("promote", "cls@1").returncode == 0
    refused = vlm("promote", "cls@2")
    assert refused.returncode == 1 and "refused cls@2: accuracy 0.6000 < production 0.8000" in refused.stdout
    listing = vlm("list").stdout
    assert "production" in listing and "candidate" in listing and "accuracy=0.8000" in listing
    assert '"status": "production"' in vlm("show", "cls").stdout
    missing = vlm("promote", "cls")
    assert missing.returncode == 2 and "promote needs a version" in missing.stderr
    kept = vlm("rm", "cls@1")
    assert kept.returncode == 2 and "cls@1 is production" in kept.stderr and "Traceback" not in kept.stderr
    register_classifier(registry, 0.5)
    assert "would delete cls@2, cls@3" in vlm("prune", "cls", "--keep", "0", "--dry-run").stdout
    assert [v.version for v in registry.versions("cls")] == [1, 2, 3]
    removed = vlm("rm", "cls@3")
    assert removed.returncode == 0 and "deleted cls@3 (candidate," in removed.stdout
    pruned = vlm("prune", "cls", "--keep", "0")
    assert pruned.returncode == 0 and "deleted 1 version (" in pruned.stdout and "cls@2" in pruned.stdout
    assert [v.version for v in registry.versions("cls")] == [1]
    register_classifier(registry, 0.5)  # v4
    register_classifier(registry, 0.5, parent=4)  # v5
    both = vlm("rm", "cls@4", "cls@5")  # the parent first on the line, deleted after its child
    assert both.returncode == 0 and both.stdout.index("cls@5") < both.stdout.index("cls@4"), both.stdout
    assert [v.version for v in registry.versions("cls")] == [1]
    assert "nothing to delete" in vlm("prune", "cls").stdout
    register_classifier(registry, 0.9)  # v6, promoted over v1
    assert vlm("promote", "cls@6").returncode == 0
    kept = vlm("rm", "cls@1")
    assert kept.returncode == 2 and "--rollback-depth N" in kept.stderr, kept.stderr
    planned = vlm("prune", "cls", "--keep", "0", "--rollback-depth", "0", "--dry-run").stdout
    assert "would delete cls@1" in planned and "v1 would leave the rollback history" in planned, planned
    trimmed = vlm("prune", "cls", "--keep", "0", "--rollback-depth", "0")
    assert trimmed.returncode == 0 and "v1 left the rollback history" in trimmed.stdout, trimmed.stdout
    assert [v.version for v in registry.versions("cls")] == [6]
    negative = vlm("prune", "cls", "--rollback-depth", "-1")
    assert negative.returncode == 2 and "Traceback" not in negative.stderr


def test_gate_checks_on_several_domains_must_all_pass(registry: ModelRegistry) -> None:
    from vlm_core.registry import GateCheck

    register_classifier(registry, 0.8)
    registry.promote("cls", 1)
    register_classifier(registry, 0.8, parent=1)
    forgets = [GateCheck("new", "accuracy", 0.9, 0.5, 0.0), GateCheck("old", "accuracy", 0.7, 0.8, -0.05)]
    refused = registry.promote("cls", 2, checks=forgets)
    assert not refused.promoted and registry.production("cls").version == 1  # type: ignore[union-attr]
    assert "old: accuracy 0.7000 < production 0.8000 -0.0500" in refused.reason
    assert [c.passed for c in refused.checks] == [True, False]
    holds = [GateCheck("new", "accuracy", 0.9, 0.5, 0.0), GateCheck("old", "accuracy", 0.76, 0.8, -0.05)]
    promoted = registry.promote("cls", 2, checks=holds)
    assert promoted.promoted and registry.production("cls").version == 2  # type: ignore[union-attr]
    assert registry.get("cls", 2).status_reason.startswith("new: accuracy 0.9000 >= production 0.5000")


def test_delete_refuses_what_serving_or_lineage_needs_and_never_reuses_a_number(registry: ModelRegistry) -> None:
    for accuracy in (0.8, 0.85):
        register_classifier(registry, accuracy)
    register_classifier(registry, 0.86, parent=2)  # v3: an optimised v2, say
    register_classifier(registry, 0.5)  # v4: refused candidate
    registry.promote("cls", 1)
    registry.promote("cls", 2)
    assert registry.kept_for("cls") == {1: "an earlier production version (rollback)", 2: "production"}
    for number, why in ((1, "an earlier production version"), (2, "production")):
        with pytest.raises(RegistryError, match=why):
            registry.delete(registry.get("cls", number))
    registry.promote("cls", 3, force=True)
    with pytest.raises(RegistryError, match="an earlier production version"):
        registry.delete(registry.get("cls", 2))
    freed = registry.delete(registry.get("cls", 4))
    assert freed > 1_000_000 and [v.version for v in registry.versions("cls")] == [1, 2, 3]
    assert not [p for p in (registry.root / "cls").iterdir() if p.name.startswith(".deleting")]
    with pytest.raises(RegistryError, match="does not exist"):
        registry.get("cls", 4)
    assert register_classifier(registry, 0.7).version == 5


def test_prune_keeps_the_newest_and_everything_they_depend_on(registry: ModelRegistry) -> None:
    register_classifier(registry, 0.8)  # v1 production
    register_classifier(registry, 0.7)  # v2
    register_classifier(registry, 0.7)  # v3, parent of v6
    register_classifier(registry, 0.7)  # v4
    register_classifier(registry, 0.7)  # v5
    register_classifier(registry, 0.7, parent=3)  # v6
    registry.promote("cls", 1)
    with pytest.raises(RegistryError, match="the parent of v6"):
        registry.delete(registry.get("cls", 3))
    assert [v.version for v in registry.prune_plan("cls", keep=2)] == [2, 4]
    assert [v.version for v in registry.prune_plan("cls", keep=0)] == [2, 3, 4, 5, 6]
    assert registry.prune_plan("cls", keep=10) == []
    with pytest.raises(ConfigError, match="at least 0"):
        registry.prune_plan("cls", keep=-1)
    deleted = registry.prune("cls", keep=1)
    assert [v.version for v, _size in deleted] == [5, 4, 2]
    assert [v.version for v in registry.versions("cls")] == [1, 3, 6]
    assert registry.production("cls").version == 1  # type: ignore[union-attr]
    assert [v.version for v, _size in registry.prune("cls", keep=0)] == [6, 3]
    assert [v.version for v in registry.versions("cls")] == [1]


def test_prune_with_a_rollback_depth_lets_older_production_versions_go(registry: ModelRegistry) -> None:
    for accuracy in (0.5, 0.6, 0.7, 0.8):  # v1-v4, each promoted in turn
        version = register_classifier(registry, accuracy)
        assert registry.promote("cls", version.version).promoted
    register_classifier(registry, 0.7, parent=2)  # v5: keeps v2 as its parent
    assert registry.rollback_history("cls") == [1, 2, 3, 4]
    assert registry.rollback_history("cls", 1) == [3, 4]
    with pytest.raises(RegistryError, match="earlier production version"):
        registry.delete(registry.get("cls", 1))
    assert registry.prune_plan("cls", keep=0) == [registry.get("cls", 5)]
    assert [v.version for v in registry.prune_plan("cls", keep=1, rollback_depth=1)] == [1]
    with pytest.raises(ConfigError, match="rollback depth must be at least 0"):
        registry.prune_plan("cls", keep=1, rollback_depth=-1)
    assert registry.rollback_history("cls") == [1, 2, 3, 4]  # a plan changes nothing
    deleted = registry.prune("cls", keep=1, rollback_depth=1)
    assert [v.version for v, _size in deleted] == [1]
    assert registry.rollback_history("cls") == [3, 4]
    assert [v.version for v in registry.versions("cls")] == [2, 3, 4, 5]
    assert registry.rollback("cls").version == 3
    with pytest.raises(RegistryError, match="no earlier production version"):
        registry.rollback("cls")
    assert [v.version for v, _size in registry.prune("cls", keep=0, rollback_depth=0)] == [5, 4, 2]
    assert [v.version for v in registry.versions("cls")] == [3]
