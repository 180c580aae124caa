"""The fault suite: each fault injected mid-stream into the real stack under exactly once
(0 lost, 0 seen twice by a read_committed reader, nobody acting). Processor kills run in
test_pipeline.py under both modes; the full matrix with at least once is `vlm chaos`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from services.chaos import ChaosSettings, Fault, FaultOutcome, run_fault
from services.localstack import LocalStack
from services.localstack.stack import RayWorkerService
from vlm_core.config import LocalSettings
from vlm_core.pipeline import Delivery

pytestmark = [pytest.mark.integration, pytest.mark.faults]

OPTIONS = ChaosSettings(per_camera=200, results_before_fault=80)


def check(outcome: FaultOutcome) -> None:
    print(outcome)
    assert outcome.missing == 0, f"{outcome.missing} frames without a result: {outcome}"
    assert outcome.duplicates == 0, f"{outcome.duplicates} results seen twice: {outcome}"
    assert not outcome.manual_action, f"the stream did not heal by itself: {outcome}"
    assert outcome.ingest["dropped"] == 0 and outcome.ingest["sent"] == outcome.frames, outcome


@pytest.mark.parametrize("fault", [Fault.MODEL_KILL, Fault.BROKER_OUTAGE, Fault.SERVE_REDEPLOY])
def test_exactly_once_through_a_fault_on_one_broker(
    fault: Fault, settings: LocalSettings, kafka_bootstrap: str, ray_address: str
) -> None:
    check(run_fault(fault, Delivery.EXACTLY_ONCE, settings=settings, options=OPTIONS))


@pytest.fixture(scope="module")
def two_ray_nodes(settings: LocalSettings, ray_address: str) -> Iterator[LocalSettings]:
    """The test stack's Ray head and a second node on this machine, stopped by PID at the end."""
    two = settings.model_copy(update={"ray_nodes": 2})
    node = RayWorkerService(two)
    try:
        node.start()
        yield two
    finally:
        node.stop()


def test_exactly_once_through_the_loss_of_a_ray_node(two_ray_nodes: LocalSettings, kafka_bootstrap: str) -> None:
    outcome = run_fault(Fault.RAY_NODE_LOSS, Delivery.EXACTLY_ONCE, settings=two_ray_nodes, options=OPTIONS)
    check(outcome)
    assert "model replica pid(s)" in outcome.detail


@pytest.fixture(scope="module")
def cluster(
    settings: LocalSettings, ray_address: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalSettings]:
    """A three-broker KRaft cluster of its own (ports of the test stack + 1000), sharing
    the test stack's Ray; stopped by PID at the end."""
    three = settings.model_copy(
        update={
            "kafka_brokers": 3,
            "kafka_port": settings.kafka_port + 1000,
            "kafka_controller_port": settings.kafka_controller_port + 1000,
            "state_dir": Path(tmp_path_factory.mktemp("cluster")),
        }
    )
    stack = LocalStack(three)
    try:
        stack.up(["kafka"])
        yield three
    finally:
        stack.down(["kafka"])


# broker_kill runs in `vlm chaos` (README): under exactly once it can take up to the
# processor's 30 s transaction deadline to recover, which `make test`'s budget leaves out.
@pytest.mark.parametrize("fault", [Fault.ROLLING_RESTART])
def test_exactly_once_through_a_broker_fault_on_three_brokers(fault: Fault, cluster: LocalSettings) -> None:
    check(run_fault(fault, Delivery.EXACTLY_ONCE, settings=cluster, options=OPTIONS))
