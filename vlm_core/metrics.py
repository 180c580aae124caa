"""Metric definitions: one table used by the inference service, the docs and the dashboards.

Names follow Prometheus conventions. Ray's metrics export prefixes every name with
``ray_``; :func:`exported_name` gives the name as Prometheus sees it.
"""

from __future__ import annotations

import enum
import functools
from collections import defaultdict
from dataclasses import dataclass


class Kind(str, enum.Enum):
    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


@dataclass(frozen=True)
class MetricDef:
    name: str
    kind: Kind
    description: str
    tags: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()


FRAMES_CONSUMED = MetricDef(
    "vlm_frames_consumed_total", Kind.COUNTER, "Frames read from the frames topic", ("camera_id",)
)
FRAMES_PROCESSED = MetricDef(
    "vlm_frames_processed_total", Kind.COUNTER, "Frames whose result the broker acknowledged", ("camera_id",)
)
FRAMES_DROPPED = MetricDef(
    "vlm_frames_dropped_total", Kind.COUNTER, "Frames dropped on purpose, by reason", ("camera_id", "reason")
)
FRAMES_DEAD_LETTERED = MetricDef(
    "vlm_frames_dead_lettered_total", Kind.COUNTER, "Invalid frames sent to the dead-letter topic", ("reason",)
)
E2E_LATENCY = MetricDef(
    "vlm_e2e_latency_seconds",
    Kind.HISTOGRAM,
    "Capture time to result acknowledged by the broker",
    ("camera_id",),
    LATENCY_BUCKETS_S,
)
MODEL_LATENCY = MetricDef(
    "vlm_model_latency_seconds",
    Kind.HISTOGRAM,
    "Model request round trip for one batch",
    ("task", "model", "version"),
    LATENCY_BUCKETS_S,
)
MODEL_BATCH_SIZE = MetricDef(
    "vlm_model_batch_size", Kind.HISTOGRAM, "Frames per model batch", ("task", "model", "version"), BATCH_BUCKETS
)
CONSUMER_LAG = MetricDef("vlm_consumer_lag", Kind.GAUGE, "Messages behind the partition end", ("topic", "partition"))
INFLIGHT_BATCHES = MetricDef("vlm_inflight_batches", Kind.GAUGE, "Batches sent to models, not yet committed")
LOOP_RESTARTS = MetricDef(
    "vlm_processor_loop_restarts_total",
    Kind.COUNTER,
    "Times a StreamProcessor replica's loop failed and reconnected (a rising count is a crash loop)",
)
BATCHES_ISOLATED = MetricDef(
    "vlm_batches_isolated_total",
    Kind.COUNTER,
    "Batches that kept failing and were re-run one frame at a time, by the stage that failed",
    ("stage",),
)
BATCHES_SENT = MetricDef(
    "vlm_batches_sent_total",
    Kind.COUNTER,
    "Batches the stream processor sent to the models, by the rule that sent them (SendRule)",
    ("rule",),
)
BATCH_FAILURES = MetricDef(
    "vlm_batch_failures_total", Kind.COUNTER, "Batches retried after a model or broker failure", ("stage",)
)
TO_LABEL_SAMPLED = MetricDef(
    "vlm_to_label_sampled_total", Kind.COUNTER, "Low-confidence frames sent for labelling", ("task",)
)
MODEL_LOADS = MetricDef(
    "vlm_model_loads_total", Kind.COUNTER, "Model version loads, by outcome", ("task", "model", "version", "outcome")
)
MODEL_INFO = MetricDef(
    "vlm_model_version_info", Kind.GAUGE, "1 for the model version a replica serves", ("task", "model", "version")
)
ACTIVE_TRACKS = MetricDef(
    "vlm_tracks_active", Kind.GAUGE, "Confirmed tracks of a camera (seen now or briefly lost)", ("camera_id",)
)
EVENTS = MetricDef(
    "vlm_events_total", Kind.COUNTER, "Analytics events produced, by camera and type", ("camera_id", "type")
)
ZONE_OCCUPANCY = MetricDef("vlm_zone_occupancy", Kind.GAUGE, "Confirmed tracks inside a zone", ("camera_id", "zone"))
TRACKING_STATE_RESTARTS = MetricDef(
    "vlm_tracking_state_restarts_total",
    Kind.COUNTER,
    "Cameras whose tracker state could not be used and started fresh, by reason",
    ("camera_id", "reason"),
)
TRACKING_REPLAYS = MetricDef(
    "vlm_tracking_replays_total",
    Kind.COUNTER,
    "Frames tracked before (retries, failovers): 'replayed' got their first ids, 'unknown' were too old",
    ("camera_id", "outcome"),
)
TRACKING_STATE_LOADS = MetricDef(
    "vlm_tracking_state_loads_total", Kind.COUNTER, "Camera states loaded from the state topic on assignment"
)

ALL_METRICS: tuple[MetricDef, ...] = (
    FRAMES_CONSUMED,
    FRAMES_PROCESSED,
    FRAMES_DROPPED,
    FRAMES_DEAD_LETTERED,
    E2E_LATENCY,
    MODEL_LATENCY,
    MODEL_BATCH_SIZE,
    CONSUMER_LAG,
    INFLIGHT_BATCHES,
    BATCHES_SENT,
    BATCH_FAILURES,
    BATCHES_ISOLATED,
    LOOP_RESTARTS,
    TO_LABEL_SAMPLED,
    MODEL_LOADS,
    MODEL_INFO,
    ACTIVE_TRACKS,
    EVENTS,
    ZONE_OCCUPANCY,
    TRACKING_STATE_RESTARTS,
    TRACKING_REPLAYS,
    TRACKING_STATE_LOADS,
)

RAY_PREFIX = "ray_"


def exported_name(metric: MetricDef) -> str:
    return RAY_PREFIX + metric.name


_LABEL_SAFE = frozenset(chr(c) for c in range(0x20, 0x7F)) - {"\\", '"'}


@functools.lru_cache(maxsize=4096)
def metric_label(value: str) -> str:
    """A label value from user data (a camera id) in a form every exporter accepts.

    Ray's exporter rejects non-ASCII tag values, so printable ASCII stays as it is and
    everything else (and the escape character itself, and the quote) becomes a ``\\uXXXX``
    or ``\\UXXXXXXXX`` escape, as in JSON and Python: readable, and one-to-one, so two
    distinct ids never share a series. ``cam-1`` stays ``cam-1``; ``камера 📷`` becomes
    ``\\u043a\\u0430\\u043c\\u0435\\u0440\\u0430 \\U0001f4f7``.
    """
    if all(ch in _LABEL_SAFE for ch in value):
        return value
    return "".join(
        ch if ch in _LABEL_SAFE else (f"\\u{ord(ch):04x}" if ord(ch) <= 0xFFFF else f"\\U{ord(ch):08x}") for ch in value
    )


@dataclass(frozen=True)
class CounterSample:
    """One counter series' value, as a replica reports it (its stats cross Ray)."""

    name: str
    tags: dict[str, str]
    value: float


def counter_total(samples: list[CounterSample], metric: MetricDef, **match: str) -> float:
    """The sum of a counter's samples whose tags match (``match`` values as given by the user)."""
    return sum(
        s.value
        for s in samples
        if s.name == metric.name and all(s.tags.get(k) == metric_label(v) for k, v in match.items())
    )


def label_values(tags: dict[str, str]) -> tuple[tuple[str, str], ...]:
    """Tags as sorted (key, label value) pairs, every value through :func:`metric_label`."""
    return tuple(sorted((key, metric_label(value)) for key, value in tags.items()))


class MetricsSink:
    """Where the processor reports. The default keeps values in memory (tests, the demo
    summary); the Serve deployment adds Ray's exporter on top. Tag values may be user data
    (camera ids): every sink stores them through :func:`metric_label`."""

    def __init__(self) -> None:
        self.counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = defaultdict(float)
        self.gauges: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self.observations: dict[tuple[str, tuple[tuple[str, str], ...]], list[float]] = defaultdict(list)

    def inc(self, metric: MetricDef, value: float = 1.0, **tags: str) -> None:
        labels = label_values(tags)
        self.counters[(metric.name, labels)] += value
        self._export(metric, value, labels)

    def set(self, metric: MetricDef, value: float, **tags: str) -> None:
        labels = label_values(tags)
        self.gauges[(metric.name, labels)] = value
        self._export(metric, value, labels)

    def observe(self, metric: MetricDef, value: float, **tags: str) -> None:
        labels = label_values(tags)
        observations = self.observations[(metric.name, labels)]
        observations.append(value)
        if len(observations) > 10_000:
            del observations[:5_000]
        self._export(metric, value, labels)

    def record(self, metric: MetricDef, value: float = 1.0, **tags: str) -> None:
        """``inc``, ``set`` or ``observe``, as the metric's kind says."""
        update = {Kind.COUNTER: self.inc, Kind.GAUGE: self.set, Kind.HISTOGRAM: self.observe}[metric.kind]
        update(metric, value, **tags)

    def _export(self, metric: MetricDef, value: float, labels: tuple[tuple[str, str], ...]) -> None:
        """Where a subclass hands an update on (Ray's exporter); ``labels`` are already safe."""

    def counter_samples(self) -> list[CounterSample]:
        return [CounterSample(name, dict(tags), value) for (name, tags), value in list(self.counters.items())]

    def total(self, metric: MetricDef, **match: str) -> float:
        return sum(
            value
            for (name, tags), value in self.counters.items()
            if name == metric.name and all(dict(tags).get(k) == metric_label(v) for k, v in match.items())
        )
