"""The processor's metrics, exported through Ray's metrics export port (ray.util.metrics)."""

from __future__ import annotations

from typing import Any

from ray.util import metrics as ray_metrics

from vlm_core import metrics as m


class RayMetricsSink(m.MetricsSink):
    """Keeps the in-memory view (for status) and mirrors every update to Ray's exporter."""

    def __init__(self) -> None:
        super().__init__()
        self._ray: dict[str, Any] = {}
        for d in m.ALL_METRICS:
            # Ray appends nothing to names; Prometheus sees them with the ray_ prefix.
            if d.kind is m.Kind.COUNTER:
                self._ray[d.name] = ray_metrics.Counter(d.name, d.description, tag_keys=d.tags)
            elif d.kind is m.Kind.GAUGE:
                self._ray[d.name] = ray_metrics.Gauge(d.name, d.description, tag_keys=d.tags)
            else:
                self._ray[d.name] = ray_metrics.Histogram(
                    d.name, d.description, boundaries=list(d.buckets), tag_keys=d.tags
                )

    def inc(self, metric: m.MetricDef, value: float = 1.0, **tags: str) -> None:
        super().inc(metric, value, **tags)
        self._ray[metric.name].inc(value, tags=_ray_tags(tags))

    def set(self, metric: m.MetricDef, value: float, **tags: str) -> None:
        super().set(metric, value, **tags)
        self._ray[metric.name].set(value, tags=_ray_tags(tags))

    def observe(self, metric: m.MetricDef, value: float, **tags: str) -> None:
        super().observe(metric, value, **tags)
        self._ray[metric.name].observe(value, tags=_ray_tags(tags))


def _ray_tags(tags: dict[str, str]) -> dict[str, str] | None:
    """Ray's exporter rejects non-ASCII tag values (UnicodeEncodeError in Metric.record)."""
    return dict(m.label_values(tags)) or None
