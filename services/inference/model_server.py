"""One Serve deployment class for every model: Classifier, Detector and Segmenter."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
from ray import serve

from vlm_core.models import ModelSpec, Predictor, build_predictor
from vlm_core.results import TaskOutput

log = logging.getLogger("ray.serve")


def _frames_in(requests: list[list[np.ndarray]]) -> int:
    return sum(len(r) for r in requests)


class ModelServer:
    """Holds one Predictor. Requests are whole frame batches; ``@serve.batch`` merges
    concurrent requests up to ``max_batch_size`` frames.

    ``reconfigure`` (Serve's ``user_config``) hot-swaps the model: the new version loads
    and warms up first; if it fails, the old one keeps serving and the error is kept.
    """

    def __init__(
        self,
        spec: dict[str, Any],
        torch_threads: int = 1,
        max_batch_size: int = 16,
        batch_wait_timeout_s: float = 0.005,
    ) -> None:
        import cv2
        import torch

        torch.set_num_threads(torch_threads)
        cv2.setNumThreads(1)
        self.predictor: Predictor = self._load(ModelSpec.from_dict(spec))
        self.predict_many.set_max_batch_size(max_batch_size)
        self.predict_many.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self.last_error = ""
        self.loads = 1

    @staticmethod
    def _load(spec: ModelSpec) -> Predictor:
        start = time.perf_counter()
        predictor = build_predictor(spec)
        predictor.warmup()
        log.info("loaded %s@%s in %.1fs", spec.name, spec.version, time.perf_counter() - start)
        return predictor

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        spec_doc = (user_config or {}).get("spec")
        if not spec_doc:
            return
        self.swap(spec_doc)

    def swap(self, spec_doc: dict[str, Any]) -> dict[str, Any]:
        try:
            spec = ModelSpec.from_dict(spec_doc)
            if spec == self.predictor.spec:
                return self.info()
            predictor = self._load(spec)
        except Exception as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.error(
                "model load failed, keeping %s@%s: %s",
                self.predictor.spec.name,
                self.predictor.spec.version,
                self.last_error,
            )
            return self.info()
        self.predictor = predictor  # one reference swap: in-flight batches finish on the old model
        self.loads += 1
        self.last_error = ""
        return self.info()

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005, batch_size_fn=_frames_in)
    async def predict_many(self, requests: list[list[np.ndarray]]) -> list[list[TaskOutput]]:
        flat = [image for request in requests for image in request]
        predictor = self.predictor
        # Inline on the replica's loop: a hand-off to an executor thread only adds GIL
        # contention on a one-thread budget, and batches run one at a time anyway.
        outputs = predictor.predict(flat)
        split, start = [], 0
        for request in requests:
            split.append(outputs[start : start + len(request)])
            start += len(request)
        return split

    async def predict(self, images: list[np.ndarray]) -> list[TaskOutput]:
        return await self.predict_many(images)

    def info(self) -> dict[str, Any]:
        spec = self.predictor.spec
        return {
            "task": spec.task.value,
            "model": spec.name,
            "version": spec.version,
            "device": str(self.predictor.device),
            "loads": self.loads,
            "last_error": self.last_error,
        }
