"""The standard sinks on Kafka topics: results, events, dead letters and, when enabled,
to-label."""

from __future__ import annotations

import time
from collections.abc import Callable

from vlm_core import metrics as m
from vlm_core.config import Topics
from vlm_core.pipeline import ActiveLearningSettings
from vlm_core.stream.active_learning import ToLabelSampler
from vlm_core.stream.dead_letters import DeadLettersToKafka
from vlm_core.stream.events import EventsToKafka
from vlm_core.stream.ports import Producer
from vlm_core.stream.results import ResultsToKafka
from vlm_core.stream.sinks import ResultSink, Sinks


def kafka_sinks(
    producer: Producer,
    topics: Topics,
    *,
    active_learning: ActiveLearningSettings | None = None,
    metrics: m.MetricsSink | None = None,
    clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
) -> Sinks:
    # Events come only from tracked cameras; for the others this sink sends nothing.
    results: list[ResultSink] = [ResultsToKafka(producer, topics.results), EventsToKafka(producer, topics.events)]
    if active_learning is not None and active_learning.enabled and topics.to_label:
        sampler = ToLabelSampler(
            producer, topics.to_label, active_learning, metrics=metrics or m.MetricsSink(), clock_ms=clock_ms
        )
        results.append(sampler)
    return Sinks(dead_letters=DeadLettersToKafka(producer, topics.dlq), results=tuple(results))
