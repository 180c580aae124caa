"""A camera's outbound buffer: frames waiting for the broker, bounded, with an explicit
policy for when it is full. Pure logic; ingest holds one per camera under its own lock."""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


class BufferPolicy(str, enum.Enum):
    """What a camera does when the broker is away long enough to fill its buffer."""

    #: The camera waits for room: every frame it reads reaches Kafka, late. For files and
    #: generated scenes; a live camera that waits loses frames inside its driver instead.
    BLOCK = "block"
    #: The oldest waiting frame makes room for the newest, and is counted as dropped.
    DROP_OLDEST = "drop_oldest"
    #: ``block`` for sources read on demand (files, synthetic), ``drop_oldest`` for live ones.
    AUTO = "auto"

    def resolved(self, live: bool) -> BufferPolicy:
        if self is BufferPolicy.AUTO:
            return BufferPolicy.DROP_OLDEST if live else BufferPolicy.BLOCK
        return self


@dataclass
class FrameBuffer(Generic[T]):
    """Frames in arrival order. ``put`` refuses nothing: under ``drop_oldest`` it returns
    the frame it pushed out; under ``block`` the caller waits while :attr:`full`. A frame
    whose send failed goes back to the front (``requeue``): it is the oldest, so it keeps
    its place and is never counted twice."""

    capacity: int
    policy: BufferPolicy
    _items: deque[T] = field(default_factory=deque)
    dropped: int = 0

    def __post_init__(self) -> None:
        if self.capacity < 1:
            raise ValueError(f"a buffer holds at least one frame, got capacity {self.capacity}")
        if self.policy is BufferPolicy.AUTO:
            raise ValueError("resolve the AUTO policy against the source first")

    @property
    def full(self) -> bool:
        return len(self._items) >= self.capacity

    def put(self, item: T) -> T | None:
        """Append ``item``; the oldest frame dropped to make room, if any (``drop_oldest``).
        Under ``block`` a full buffer takes it anyway: the caller is the one who waits."""
        dropped = None
        if self.full and self.policy is BufferPolicy.DROP_OLDEST:
            dropped = self._items.popleft()
            self.dropped += 1
        self._items.append(item)
        return dropped

    def requeue(self, item: T) -> T | None:
        """Put back a frame whose send failed, at the front. Under ``drop_oldest`` with no
        room it is itself the oldest and is dropped (returned)."""
        if self.full and self.policy is BufferPolicy.DROP_OLDEST:
            self.dropped += 1
            return item
        self._items.appendleft(item)
        return None

    def take(self) -> T | None:
        return self._items.popleft() if self._items else None

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[T]:
        return iter(self._items)
