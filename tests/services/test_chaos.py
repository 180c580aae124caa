"""The pure parts of the fault scenarios: what counts as recovered, and as passing."""

from __future__ import annotations

from services.chaos import Fault, FaultOutcome, _longest_pause


def outcome(**fields: object) -> FaultOutcome:
    base: dict[str, object] = dict(
        fault="broker_kill",
        delivery="exactly_once",
        frames=10,
        results=10,
        missing=0,
        duplicates=0,
        recovery_s=1.0,
        manual_action=False,
        brokers=3,
    )
    return FaultOutcome(**{**base, **fields})  # type: ignore[arg-type]


def test_recovery_is_the_longest_pause_from_the_fault_on() -> None:
    arrivals = [1.0, 2.0, 10.0, 10.5, 30.0, 30.1]
    assert _longest_pause(arrivals, since=9.0) == 19.5  # 10.5 -> 30.0; the pause before 9.0 is not the fault's
    assert _longest_pause([], since=5.0) == 0.0


def test_exactly_once_passes_only_with_nothing_lost_or_doubled_and_nobody_acting() -> None:
    assert outcome().ok
    assert not outcome(duplicates=1).ok
    assert outcome(duplicates=3, delivery="at_least_once").ok  # counted, allowed
    assert not outcome(missing=1, delivery="at_least_once").ok
    assert not outcome(manual_action=True).ok


def test_broker_faults_need_the_cluster_in_a_box() -> None:
    assert Fault.BROKER_KILL.needs_brokers == 3 and Fault.ROLLING_RESTART.needs_brokers == 3
    assert Fault.PROCESSOR_KILL.needs_brokers == 1
