"""One Serve deployment class for every model: Classifier, Detector and Segmenter."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from ray import serve
from ray.util import metrics as ray_metrics

from vlm_core import metrics as m
from vlm_core.contracts.frame import Frame, jpeg_scale
from vlm_core.contracts.result import TaskOutput
from vlm_core.cpu import (
    available_cpus,
    format_cpu_list,
    lower_thread_priority,
    model_cpus,
    name_thread,
    no_huge_pages,
    pin_thread,
)
from vlm_core.models import ModelSpec, Predictor
from vlm_core.models.predictor import PreparedBatch
from vlm_core.pipeline import DeploymentSettings
from vlm_core.registry import RegistryFollow
from vlm_core.stream.collector import watch_collections
from vlm_core.stream.profile import StageProfile, StageTotals
from vlm_core.tasks import build_predictor

log = logging.getLogger("ray.serve")


@dataclass(frozen=True)
class _Prepared:
    predictor: Predictor
    batch: PreparedBatch


def _preprocessing_thread(niceness: int) -> None:
    name_thread()
    lower_thread_priority(niceness)


def place_forward_thread() -> None:
    """The calling (infer) thread, named for the kernel, onto the node's model CPUs
    (``VLM_MODEL_CPUS``), where it reserves some: its other processes run elsewhere, so a
    forward pass never waits behind them for a core."""
    name_thread()
    try:
        cpus = model_cpus()
        if cpus is not None:
            pin_thread(cpus)
    except (ValueError, OSError) as exc:  # still serves, on the CPUs it was given
        log.warning("forward passes stay on CPUs %s: %s", format_cpu_list(available_cpus()), exc)


def _forward_thread() -> tuple[frozenset[int], int]:
    return available_cpus(), threading.get_native_id()


def _frames_in(requests: list[_Prepared]) -> int:
    return sum(len(r.batch) for r in requests)


class ModelServer:
    """Holds one Predictor. Requests are whole frame batches; ``@serve.batch`` merges
    concurrent requests up to ``max_batch_size`` frames.

    Hot swap: ``reconfigure`` (Serve's ``user_config``) or, with ``follow`` set, a watcher
    that follows a registry name's production version. The new version loads and warms
    up first, then one reference swap makes it serve; batches already running finish on
    the old one. A version that fails to load leaves the old one serving, and the error is
    kept in ``info()`` and counted in ``vlm_model_loads_total{outcome="failed"}``.
    """

    def __init__(
        self,
        spec: ModelSpec,
        settings: DeploymentSettings | None = None,
        follow: RegistryFollow | None = None,
        request_frames: int | None = None,
    ) -> None:
        import cv2
        import torch

        settings = settings or DeploymentSettings()
        torch.set_num_threads(settings.torch_threads)
        cv2.setNumThreads(1)
        no_huge_pages()
        self.graph = settings.graph
        self._loads = ray_metrics.Counter(m.MODEL_LOADS.name, m.MODEL_LOADS.description, tag_keys=m.MODEL_LOADS.tags)
        self._info = ray_metrics.Gauge(m.MODEL_INFO.name, m.MODEL_INFO.description, tag_keys=m.MODEL_INFO.tags)
        self.last_error = ""
        self.loads = 0
        self._prep_pool = ThreadPoolExecutor(
            1,
            thread_name_prefix="preprocess",
            initializer=_preprocessing_thread,
            initargs=(settings.preprocess_niceness,),
        )
        self._infer_pool = ThreadPoolExecutor(1, thread_name_prefix="infer", initializer=place_forward_thread)
        #: The CPUs the forward passes run on (the infer thread's, placed before the first
        #: batch), and that thread's native id: a process that holds the model beside other
        #: work lowers the priority of all but it.
        self.forward_cpus, self.forward_thread_id = self._infer_pool.submit(_forward_thread).result()
        #: Wall and CPU seconds of preprocess and infer (forward pass and post-processing).
        self.profile = StageProfile()
        watch_collections(self.profile)
        self.max_batch_size = settings.max_batch_size
        self.warmup_s = settings.warmup_s
        #: The frames the processor sends a request (its batch size): the batch size an
        #: int8 graph runs at (``Predictor.warmup_sizes``).
        self.request_frames = request_frames
        self.predictor: Predictor = self._load(spec)
        self._publish(None, self.predictor.spec)
        self.predict_many.set_max_batch_size(settings.max_batch_size)
        self.predict_many.set_batch_wait_timeout_s(settings.batch_wait_timeout_s)
        self._stop = threading.Event()
        self.follow = follow
        if follow:
            threading.Thread(target=self._follow_registry, name="registry-watch", daemon=True).start()

    def _tags(self, spec: ModelSpec) -> dict[str, str]:
        return dict(m.label_values({"task": spec.task.value, "model": spec.name, "version": spec.version}))

    def _load(self, spec: ModelSpec) -> Predictor:
        start = time.perf_counter()
        try:
            predictor = build_predictor(spec, graph=self.graph)
            sizes = predictor.warmup_sizes(self.max_batch_size, self.warmup_s, request_frames=self.request_frames)
        except Exception:
            self._loads.inc(1, tags={**self._tags(spec), "outcome": "failed"})
            raise
        self._loads.inc(1, tags={**self._tags(spec), "outcome": "loaded"})
        self.loads += 1
        log.info(
            "loaded %s@%s in %.1fs (warmed up at batch sizes %s)",
            spec.name,
            spec.version,
            time.perf_counter() - start,
            sizes,
        )
        return predictor

    def _publish(self, old: ModelSpec | None, new: ModelSpec) -> None:
        if old is not None:
            self._info.set(0, tags=self._tags(old))
        self._info.set(1, tags=self._tags(new))

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        spec_doc = (user_config or {}).get("spec")
        if spec_doc:
            self.swap(spec_doc)

    def swap(self, new: ModelSpec | dict[str, Any]) -> dict[str, Any]:
        """Serve ``new`` (a spec, or its dict form) once it has loaded and warmed up."""
        try:
            spec = new if isinstance(new, ModelSpec) else ModelSpec.from_dict(new)
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
        old = self.predictor.spec
        self.predictor = predictor  # one reference swap
        self.last_error = ""
        self._publish(old, predictor.spec)
        log.info("now serving %s@%s (was %s)", predictor.spec.name, predictor.spec.version, old.version)
        return self.info()

    def _follow_registry(self) -> None:
        name_thread()
        follow = self.follow
        assert follow is not None
        failed_version = None
        while not self._stop.wait(follow.poll_s):
            try:
                spec = follow.spec()
            except Exception as exc:  # a registry hiccup must not stop serving
                log.warning("registry check failed: %s", exc)
                continue
            if spec.version not in (self.predictor.spec.version, failed_version):
                self.swap(spec)
                failed_version = spec.version if self.predictor.spec.version != spec.version else None

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.0, batch_size_fn=_frames_in)
    async def predict_many(self, requests: list[_Prepared]) -> list[list[TaskOutput]]:
        # Requests prepared by different versions around a hot swap run separately.
        groups: dict[int, list[_Prepared]] = {}
        for request in requests:
            groups.setdefault(id(request.predictor), []).append(request)
        outputs: dict[int, list[TaskOutput]] = {}
        loop = asyncio.get_running_loop()
        for group in groups.values():
            predictor = group[0].predictor
            batch = PreparedBatch.concat([r.batch for r in group])
            flat = await loop.run_in_executor(self._infer_pool, self._infer, predictor, batch)
            start = 0
            for request in group:
                outputs[id(request)] = flat[start : start + len(request.batch)]
                start += len(request.batch)
        return [outputs[id(r)] for r in requests]

    async def predict(self, inputs: Sequence[np.ndarray | Frame]) -> list[TaskOutput]:
        """One batch of decoded images, or of frames the processor checked (its
        ``model_input: encoded``), decoded here. A frame the codec refuses fails the
        request with its FrameError, which the processor dead-letters with its reason."""
        # Decoding and pre-processing run on their own thread as requests arrive, so the
        # next batch is ready when the model finishes the current one; the forward pass
        # keeps the deployment's torch thread budget on the inference thread.
        predictor = self.predictor
        batch = await asyncio.get_running_loop().run_in_executor(self._prep_pool, self._prepare, predictor, inputs)
        return await self.predict_many(_Prepared(predictor, batch))

    def submit(self, inputs: Sequence[np.ndarray | Frame]) -> Future[list[TaskOutput]]:
        """``predict`` without Serve, for a processor that holds the model in its own
        process (``model_hosting: processor``): the batch is prepared on the preprocessing
        thread and runs on the infer thread, as a request to a replica does, so the next
        batch is prepared while this one runs. Its error, a FrameError included, is the
        future's."""
        answer: Future[list[TaskOutput]] = Future()
        predictor = self.predictor

        def then(step: Callable[[Any], None]) -> Callable[[Future[Any]], None]:
            """A stage's done-callback: its result to ``step``, its error to the answer."""

            def relay(done: Future[Any]) -> None:
                error = done.exception()
                if error is not None:
                    answer.set_exception(error)
                else:
                    step(done.result())

            return relay

        def infer(batch: PreparedBatch) -> None:
            self._infer_pool.submit(self._infer, predictor, batch).add_done_callback(then(answer.set_result))

        self._prep_pool.submit(self._prepare, predictor, inputs).add_done_callback(then(infer))
        return answer

    def _prepare(self, predictor: Predictor, inputs: Sequence[np.ndarray | Frame]) -> PreparedBatch:
        # Measured on the pools' own threads, so the CPU time is each stage's alone.
        frames = [x for x in inputs if isinstance(x, Frame)]
        images = [x for x in inputs if isinstance(x, np.ndarray)]
        sizes = None
        if frames:
            # JPEGs decode in the DCT domain at the largest scale the preprocessing does not
            # need: a 1280x720 frame for a 224 px classifier decodes at 1/2, a quarter the pixels.
            short_side = predictor.decode_short_side()
            with self.profile.measure("decode"):
                images = [f.pixels(jpeg_scale(f.width, f.height, short_side)) for f in frames]
            sizes = [(f.height, f.width) for f in frames]
        with self.profile.measure("preprocess"):
            return predictor.preprocess(images, sizes)

    def _infer(self, predictor: Predictor, batch: PreparedBatch) -> list[TaskOutput]:
        with self.profile.measure("infer"):
            return predictor.infer(batch)

    def stages(self) -> dict[str, StageTotals]:
        """Wall and CPU seconds by stage since the replica started (the bench's stage table)."""
        return self.profile.snapshot()

    def info(self) -> dict[str, Any]:
        spec = self.predictor.spec
        return {
            "task": spec.task.value,
            "model": spec.name,
            "version": spec.version,
            "device": str(self.predictor.device),
            "loads": self.loads,
            "last_error": self.last_error,
            "pid": os.getpid(),
            "forward_cpus": format_cpu_list(self.forward_cpus),
        }

    def __del__(self) -> None:
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()
