"""Sinks: where the processor's outcomes go. Each is a plain callable that takes one
outcome and returns the sends it made; their acknowledgements gate the batch's commit.

A frame either has a result (:class:`Processed`, handed to every result sink in order) or
is refused (:class:`Rejected`, handed to the dead-letter sink). A new sink (events, a
database) is one module with one callable, added to :class:`Sinks`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from vlm_core.contracts.event import Event
from vlm_core.contracts.frame import Frame
from vlm_core.contracts.result import Result
from vlm_core.stream.ports import Pending, Record


@dataclass(frozen=True)
class Processed:
    """A frame and its result. ``value`` is the result serialised once, for every sink;
    ``events`` are the analytics events the frame caused (tracked cameras only)."""

    record: Record
    frame: Frame
    result: Result
    value: bytes
    events: tuple[Event, ...] = ()


@dataclass(frozen=True)
class Rejected:
    """A record that goes to the dead-letter topic, with its reason code and error."""

    record: Record
    reason: str
    error: str


ResultSink = Callable[[Processed], Sequence[Pending]]
DeadLetterSink = Callable[[Rejected], Sequence[Pending]]


@dataclass(frozen=True)
class Sinks:
    dead_letters: DeadLetterSink
    #: Called in order for every result: the results topic first, then to-label, events...
    results: tuple[ResultSink, ...]


def sink_name(sink: object) -> str:
    return str(getattr(sink, "name", type(sink).__name__))
