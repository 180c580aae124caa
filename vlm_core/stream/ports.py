"""The small ports the StreamProcessor runs over: a consumer, a producer, model clients.

``services`` implements them with kafka-python and Ray Serve handles; the tests with
in-memory fakes.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from vlm_core.contracts.frame import Frame

TopicPartition = tuple[str, int]


class Record(Protocol):
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes | None]] | None


class Pending(Protocol):
    """Something sent and not yet acknowledged: a Kafka send, a model request."""

    def result(self, timeout: float | None = None) -> Any: ...


class FrameConsumer(Protocol):
    def poll(self, max_records: int, timeout_ms: int) -> list[Record]: ...

    def commit(self, offsets: dict[TopicPartition, int], wait: bool = True) -> None:
        """Commit offsets. ``wait=False`` may return before the broker confirms; a commit
        lost that way only means the frames are read again (at least once)."""

    def rewind(self) -> None:
        """Seek every assigned partition back to its committed offset."""

    def lag(self) -> dict[TopicPartition, int]: ...

    def assignment(self) -> tuple[int, frozenset[TopicPartition]]:
        """(generation, partitions) of the current assignment; the generation grows with
        every new assignment (a rebalance, a reconnect)."""
        ...


class Producer(Protocol):
    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: list[tuple[str, bytes]],
        partition: int | None = None,
    ) -> Pending: ...


class Transactions(Protocol):
    """Exactly-once delivery (Kafka's consume-transform-produce transactions): every send
    made between ``begin`` and ``commit`` becomes visible to ``read_committed`` readers
    together with the consumer offsets given to ``commit``, or, after ``abort``, not at all.
    The producer behind the sinks and the state store is the transaction's."""

    def begin(self) -> None:
        """Open a transaction; a no-op while one is open."""

    def commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Add the consumer's ``offsets`` to the open transaction (opening one if needed)
        and commit it, through the consumer's group metadata so a fenced member fails."""

    def abort(self) -> None:
        """Abort the open transaction, if any. Raises when the producer is fenced or
        broken: it must then be recreated."""


@dataclass(frozen=True)
class StateRecord:
    """One camera's tracker state, as written to or read from the state topic. Its
    ``partition`` is the camera's frames partition (the topics are co-partitioned)."""

    camera_id: str
    partition: int
    value: bytes | None


class StateStore(Protocol):
    """The state topic: compacted, keyed by camera, co-partitioned with the frames."""

    def load(self, partitions: Collection[int]) -> list[StateRecord]:
        """The latest record of every camera in these partitions."""
        ...

    def write(self, record: StateRecord) -> Pending: ...


#: Sends one batch to a model deployment, as decoded images or as checked frames (the
#: pipeline's ``processor.model_input``); returns its pending outputs.
ModelClient = Callable[[Sequence[np.ndarray | Frame]], Pending]
