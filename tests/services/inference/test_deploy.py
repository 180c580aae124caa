"""Which applications of a Serve config deploy on this machine: an optional one whose
weights are missing is skipped with the reason, and its cameras go back to the others."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.inference import deploy
from tests.vlm_core.models.test_coco_weights import place_weights
from vlm_core.contracts.task import Task
from vlm_core.errors import ConfigError, WeightsError


def test_offline_the_coco_application_is_skipped_and_its_camera_served_by_the_main_one(torch_home: Path) -> None:
    plan = deploy.plan().without_unavailable(download_timeout_s=0.5)
    assert list(plan.applications) == ["vlm"]
    assert plan.skipped_cameras == {"vlm-coco": ["vtest"]}
    reason = plan.skipped["vlm-coco"]
    assert "could not be downloaded" in reason and str(torch_home) in reason
    assert "ssdlite320_mobilenet_v3_large_coco" in reason and "lraspp_mobilenet_v3_large" in reason
    main = plan.configs()["vlm"]
    assert main.cameras.policy_for("vtest") == main.cameras.default


def test_with_the_weights_in_torch_cache_both_applications_deploy(torch_home: Path) -> None:
    for arch in ("ssdlite320_mobilenet_v3_large", "lraspp_mobilenet_v3_large"):
        place_weights(arch)
    plan = deploy.plan().without_unavailable(download_timeout_s=0.5)
    assert list(plan.applications) == ["vlm", "vlm-coco"] and plan.skipped == {}
    configs = plan.configs(bootstrap="127.0.0.1:1")
    assert {c.bootstrap for c in configs.values()} == {"127.0.0.1:1"}
    assert configs["vlm"].cameras.policy_for("vtest").tasks == ()
    assert configs["vlm-coco"].cameras.policy_for("vtest").tasks == (Task.DETECTION, Task.SEGMENTATION)


def test_an_application_asked_for_by_name_is_never_skipped(torch_home: Path) -> None:
    with pytest.raises(WeightsError, match="application 'vlm-coco'"):
        deploy.plan(None, "vlm-coco").without_unavailable(download_timeout_s=0.5)
    only_main = deploy.plan(None, "vlm")
    assert list(only_main.applications) == ["vlm"]
    assert "vtest" not in only_main.applications["vlm"]["cameras"]["overrides"]
    with pytest.raises(ConfigError, match="no application named 'nope'"):
        deploy.plan(None, "nope")
