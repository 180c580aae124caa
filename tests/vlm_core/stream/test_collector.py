from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from vlm_core.stream import collector
from vlm_core.stream.collector import FULL_STAGE, YOUNG_STAGE, watch_collections
from vlm_core.stream.profile import StageProfile


@pytest.fixture
def unwatched() -> Iterator[None]:
    """Each test installs its own watch; the process's collector is left as it was."""
    previous = collector._watched
    collector._watched = None
    try:
        yield
    finally:
        if collector._watched is not None and collector._watched in gc.callbacks:
            gc.callbacks.remove(collector._watched)
        collector._watched = previous


def test_collections_are_counted_as_young_and_full_stages(unwatched: None) -> None:
    profile = StageProfile()
    assert watch_collections(profile)
    gc.collect(0)
    gc.collect(2)
    gc.collect(2)
    stages = profile.snapshot()
    assert stages[YOUNG_STAGE].calls >= 1
    assert stages[FULL_STAGE].calls >= 2
    assert stages[FULL_STAGE].wall_s > 0


def test_one_profile_a_process(unwatched: None) -> None:
    first, second = StageProfile(), StageProfile()
    assert watch_collections(first)
    assert not watch_collections(second)
    assert watch_collections(first)
    gc.collect(2)
    assert FULL_STAGE in first.snapshot()
    assert second.snapshot() == {}


def test_a_collection_while_the_profile_is_locked_does_not_wait_for_it(unwatched: None) -> None:
    """A collection runs in whichever thread allocates, e.g. one inside the profile's own
    snapshot: counting it must not take the profile's lock."""
    import threading

    profile = StageProfile()
    watch_collections(profile)
    done = threading.Event()

    def collect_while_locked() -> None:
        with profile._lock:
            gc.collect(2)
        done.set()

    threading.Thread(target=collect_while_locked, daemon=True).start()
    assert done.wait(10), "the collection waited for the profile's lock"
    assert profile.snapshot()[FULL_STAGE].calls >= 1
