"""The to-label sink: a result whose best score is low sends its frame reference
(``vlm.to_label/v2``, with the prediction) to the to-label topic for a labelling tool, at most
``max_per_minute`` of them per processor."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence

from vlm_core import metrics as m
from vlm_core.contracts.dlq import FrameRef
from vlm_core.contracts.to_label import ToLabel
from vlm_core.pipeline import ActiveLearningSettings
from vlm_core.stream.ports import Pending, Producer
from vlm_core.stream.sinks import Processed


class ToLabelSampler:
    name = "to_label"

    def __init__(
        self,
        producer: Producer,
        topic: str,
        settings: ActiveLearningSettings,
        *,
        metrics: m.MetricsSink,
        clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self.producer = producer
        self.topic = topic
        self.settings = settings
        self.metrics = metrics
        self.clock_ms = clock_ms
        self._sent_ms: deque[int] = deque()  # send times within the last minute

    def __call__(self, processed: Processed) -> Sequence[Pending]:
        result = processed.result
        scores = {}
        if result.classification is not None and result.classification.top_k:
            scores["classification"] = result.classification.top_k[0].score
        if result.detection is not None and result.detection.detections:
            scores["detection"] = max(d.score for d in result.detection.detections)
        low = {task: score for task, score in scores.items() if score < self.settings.score_threshold}
        if not low:
            return []
        now = self.clock_ms()
        while self._sent_ms and now - self._sent_ms[0] >= 60_000:
            self._sent_ms.popleft()
        if len(self._sent_ms) >= self.settings.max_per_minute:
            return []
        self._sent_ms.append(now)
        rec = processed.record
        outputs = {"classification": result.classification, "detection": result.detection}
        sample = ToLabel(
            camera_id=result.camera_id,
            seq=result.seq,
            capture_ts_ms=result.capture_ts_ms,
            frame=FrameRef(rec.topic, rec.partition, rec.offset),
            scores=low,
            models={
                task: f"{output.model.name}@{output.model.version}"
                for task, output in (("classification", result.classification), ("detection", result.detection))
                if output is not None and task in low
            },
            prediction={task: out.to_json() for task, out in outputs.items() if out is not None and task in low},
            frame_size=(result.width, result.height),
        )
        pending = self.producer.send(self.topic, rec.key, sample.to_bytes(), [])
        for task in low:
            self.metrics.inc(m.TO_LABEL_SAMPLED, task=task)
        return [pending]
