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

    def _export(self, metric: m.MetricDef, value: float, labels: tuple[tuple[str, str], ...]) -> None:
        # The labels went through metric_label: Ray's exporter rejects non-ASCII tag values.
        instrument = self._ray[metric.name]
        tags = dict(labels) or None
        if metric.kind is m.Kind.COUNTER:
            instrument.inc(value, tags=tags)
        elif metric.kind is m.Kind.GAUGE:
            instrument.set(value, tags=tags)
        else:
            instrument.observe(value, tags=tags)
