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
