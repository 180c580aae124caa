"""A camera's outbound buffer: bounded, with an explicit policy when full."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vlm_core.buffering import BufferPolicy, FrameBuffer


def test_drop_oldest_keeps_the_newest_and_counts_each_drop() -> None:
    buffer: FrameBuffer[int] = FrameBuffer(3, BufferPolicy.DROP_OLDEST)
    assert [buffer.put(i) for i in range(5)] == [None, None, None, 0, 1]
    assert list(buffer) == [2, 3, 4] and buffer.dropped == 2


def test_block_never_drops_and_reports_full_to_the_waiting_caller() -> None:
    buffer: FrameBuffer[int] = FrameBuffer(2, BufferPolicy.BLOCK)
    assert buffer.put(0) is None and not buffer.full
    assert buffer.put(1) is None and buffer.full
    assert buffer.put(2) is None, "the caller waits on full; a frame it hands over is kept"
    assert list(buffer) == [0, 1, 2] and buffer.dropped == 0


def test_a_failed_send_goes_back_to_the_front() -> None:
    buffer: FrameBuffer[int] = FrameBuffer(3, BufferPolicy.DROP_OLDEST)
    for i in range(3):
        buffer.put(i)
    first = buffer.take()
    buffer.put(3)
    assert buffer.requeue(first) == 0, "with no room, the oldest frame is the one dropped"
    assert buffer.take() == 1
    assert buffer.requeue(1) is None and list(buffer) == [1, 2, 3]


def test_auto_resolves_by_source_and_bad_buffers_are_refused() -> None:
    assert BufferPolicy.AUTO.resolved(live=True) is BufferPolicy.DROP_OLDEST
    assert BufferPolicy.AUTO.resolved(live=False) is BufferPolicy.BLOCK
    assert BufferPolicy.BLOCK.resolved(live=True) is BufferPolicy.BLOCK
    with pytest.raises(ValueError, match="at least one"):
        FrameBuffer(0, BufferPolicy.BLOCK)
    with pytest.raises(ValueError, match="AUTO"):
        FrameBuffer(1, BufferPolicy.AUTO)


@given(st.lists(st.sampled_from(["put", "take", "fail"]), max_size=200), st.integers(1, 8))
def test_drop_oldest_accounts_for_every_frame(ops: list[str], capacity: int) -> None:
    """Every frame put is, at the end, delivered, dropped (counted) or still waiting; the
    buffer never holds more than its capacity plus the frames put back after a failure."""
    buffer: FrameBuffer[int] = FrameBuffer(capacity, BufferPolicy.DROP_OLDEST)
    put, delivered, in_flight = 0, 0, []
    for op in ops:
        if op == "put":
            buffer.put(put)
            put += 1
        elif op == "take" and (item := buffer.take()) is not None:
            in_flight.append(item)
        elif op == "fail" and in_flight:
            buffer.requeue(in_flight.pop())
        assert len(buffer) <= capacity + 1
    delivered = len(in_flight)
    assert put == delivered + buffer.dropped + len(buffer)
