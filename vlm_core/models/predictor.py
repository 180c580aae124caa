"""Predictor: one shape for all tasks. Batch of decoded BGR frames in, contract results out.

A Predictor owns its pre- and post-processing: resize and normalise on the way in,
boxes and masks rescaled to each frame's own pixels on the way out. ``predict`` is
``infer(preprocess(frames))``; the two halves are public so a server can prepare the
next batch while the model runs the current one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from vlm_core.contracts.result import ModelRef, TaskOutput
from vlm_core.contracts.task import Task
from vlm_core.models.optimize import freeze_for_inference, runs_on
from vlm_core.models.spec import Graph, ModelSpec
from vlm_core.models.zoo import build_model, default_device, get_architecture

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: OpenCV's ``DNN_LAYOUT_NHWC`` (its Python bindings name no DataLayout value).
OPENCV_NHWC = 4


@dataclass(frozen=True)
class PreparedBatch:
    """Model-ready input of one batch, from :meth:`Predictor.preprocess`.

    ``inputs`` is one NCHW tensor, or one CHW tensor per frame for detectors (they resize
    internally); ``sizes`` holds each original frame's (height, width).
    """

    inputs: torch.Tensor | tuple[torch.Tensor, ...]
    sizes: tuple[tuple[int, int], ...]

    def __len__(self) -> int:
        return len(self.sizes)

    @staticmethod
    def concat(batches: Sequence[PreparedBatch]) -> PreparedBatch:
        if len(batches) == 1:
            return batches[0]
        sizes = tuple(size for b in batches for size in b.sizes)
        if all(isinstance(b.inputs, torch.Tensor) for b in batches):
            return PreparedBatch(torch.cat([b.inputs for b in batches]), sizes)  # type: ignore[misc]
        return PreparedBatch(tuple(t for b in batches for t in b.inputs), sizes)


class Predictor:
    """Base class of each task's predictor (in its :mod:`vlm_core.tasks` module); build
    instances with :func:`vlm_core.tasks.build_predictor`."""

    task: Task
    #: Square input side when the spec gives none; None where the model resizes itself.
    default_input_size: int | None = None
    #: On CUDA: half precision and channels-last memory.
    cuda_fast_path: bool = True

    def __init__(self, spec: ModelSpec, device: torch.device | str | None = None, graph: Graph = Graph.FROZEN) -> None:
        self.spec = spec
        self.device = runs_on(spec.optimization, torch.device(device) if device is not None else default_device())
        model, class_names = build_model(spec)
        self.class_names = class_names
        self.input_size = spec.input_size or self.default_input_size
        low_precision = spec.optimization.dtype if spec.optimization is not None else None
        half = self.device.type == "cuda" and self.cuda_fast_path and low_precision is None
        #: What the model computes in, so the batch is cast to it (float32 by default).
        self.dtype = torch.float16 if half else low_precision or torch.float32
        model.eval().to(self.device)
        if half:
            model = model.to(memory_format=torch.channels_last).half()
        #: The network as built, with its parameters (what ``model`` was made from).
        self.network: torch.nn.Module = model
        quantized = spec.optimization is not None and spec.optimization.quantized_engine is not None
        #: How a float32 network runs on the CPU (an int8 version is always frozen).
        self.graph = graph if self.device.type == "cpu" and self.dtype == torch.float32 and not quantized else None
        #: What runs the forward pass.
        self.model: torch.nn.Module = self._frozen(model) if self.graph is Graph.FROZEN else model
        mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)
        # (pixel / 255 - mean) / std as one multiply-add over the batch.
        self._scale, self._shift = 1.0 / (255.0 * std), -mean / std
        #: The same on the CPU as OpenCV's one pass per image (mean and scale in RGB order).
        self._blob = cv2.dnn.Image2BlobParams()
        self._blob.mean = (*(255.0 * m for m in IMAGENET_MEAN), 0.0)
        self._blob.scalefactor = (*(1.0 / (255.0 * s) for s in IMAGENET_STD), 1.0)
        self._blob.swapRB = True
        self._blob.datalayout = OPENCV_NHWC

    def _frozen(self, model: torch.nn.Module) -> torch.nn.Module:
        arch = get_architecture(self.spec.arch)
        example = arch.example_input(self.input_size or 224)
        try:
            return freeze_for_inference(model, example, arch.traceable_parts)
        except Exception as exc:  # a network TorchScript cannot trace still serves, as built
            # A TracerWarning raised inside torch's C++ surfaces as the context of a SystemError.
            cause = exc.__cause__ or exc.__context__ or exc
            first = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
            log.warning("%s runs eagerly: tracing it failed (%s: %s)", self.spec.arch, type(cause).__name__, first)
            self.graph = Graph.EAGER
            return model

    @property
    def model_ref(self) -> ModelRef:
        return ModelRef(self.spec.name, self.spec.version)

    def predict(self, images: Sequence[np.ndarray]) -> list[TaskOutput]:
        """Run the model on a batch of HxWx3 BGR uint8 frames of any sizes."""
        if not images:
            return []
        with torch.inference_mode():
            return self._infer(self._preprocess(images))

    def preprocess(self, images: Sequence[np.ndarray], sizes: Sequence[tuple[int, int]] | None = None) -> PreparedBatch:
        """The CPU half: resize, colour order, normalise. Thread-safe. ``sizes`` are the
        frames' own (height, width) where ``images`` were decoded smaller (see
        :meth:`decode_short_side`): outputs are mapped back to them."""
        with torch.inference_mode():
            batch = self._preprocess(images)
        return batch if sizes is None else PreparedBatch(batch.inputs, tuple(sizes))

    def decode_short_side(self) -> int | None:
        """The shorter side a frame may be decoded down to without losing what the
        preprocessing keeps (it only shrinks from there); None: decode at full size."""
        return None

    def infer(self, batch: PreparedBatch) -> list[TaskOutput]:
        """The model half: forward pass and post-processing to contract results."""
        if not len(batch):
            return []
        with torch.inference_mode():
            return self._infer(batch)

    def throughput(self, images: Sequence[np.ndarray], batch_size: int) -> float:
        """Frames per second of :meth:`predict`'s work over ``images`` in batches (warm up first)."""
        return self.throughputs(images, batch_size)[0]

    def throughputs(self, images: Sequence[np.ndarray], batch_size: int) -> tuple[float, float]:
        """Frames per second over ``images`` in batches, from one pass: of
        :meth:`preprocess` then :meth:`infer` (what :meth:`predict` does), and of
        :meth:`infer` alone (forward pass and post-processing)."""
        whole = infer = 0.0
        for i in range(0, len(images), batch_size):
            start = time.perf_counter()
            batch = self.preprocess(images[i : i + batch_size])
            prepared = time.perf_counter()
            self.infer(batch)
            done = time.perf_counter()
            whole, infer = whole + done - start, infer + done - prepared
        return len(images) / whole, len(images) / infer

    def warmup(self, batch_size: int = 1, size: tuple[int, int] = (240, 320)) -> float:
        """Run one dummy batch so the first real batch is not slow; returns its seconds."""
        start = time.perf_counter()
        self.predict([np.zeros((*size, 3), dtype=np.uint8)] * batch_size)
        return time.perf_counter() - start

    def warmup_sizes(
        self,
        max_batch_size: int,
        budget_s: float,
        size: tuple[int, int] = (240, 320),
        *,
        request_frames: int | None = None,
    ) -> list[int]:
        """Warm up at ``request_frames`` (the frames a request carries, ``max_batch_size``
        when not given), then, for a frozen float graph, at ``max_batch_size`` and at 1, 2,
        ... frames while ``budget_s`` lasts; returns the batch sizes run.

        TorchScript and oneDNN build a frozen graph's kernels per input shape, so its first
        batch of a size it has not run is slow: 1.73 times the next ones for
        ``mobilenet_v3_small`` at 224 px (median over 8 sizes, 1.54-2.09), 1.37 for
        ``ssdlite320``, 1.15 for ``lraspp`` (a one-off profile, one run each on one thread),
        against 1.12 for the eager graph. Requests bring any size up to ``max_batch_size``, so without this
        each size's first batch after a load or a swap paid it, in the latency tail. An
        int8 graph runs every batch at its first call's size (:class:`FirstBatchSize`),
        and an eager one builds nothing per shape: they warm up at ``request_frames`` only.
        That is the size a lone request runs at, unpadded, and merged requests run in
        chunks of it.
        """
        first = min(request_frames or max_batch_size, max_batch_size)
        self.warmup(first, size)
        ran = [first]
        if self.graph is not Graph.FROZEN:
            return ran
        deadline = time.perf_counter() + budget_s
        for batch_size in (max_batch_size, *range(1, max_batch_size)):
            if batch_size in ran:
                continue
            if time.perf_counter() >= deadline:
                break
            self.warmup(batch_size, size)
            ran.append(batch_size)
        return ran

    def _preprocess(self, images: Sequence[np.ndarray]) -> PreparedBatch:
        raise NotImplementedError

    def _infer(self, batch: PreparedBatch) -> list[TaskOutput]:
        raise NotImplementedError

    def _to_batch(self, arrays: Sequence[np.ndarray]) -> torch.Tensor:
        """Equally-sized BGR uint8 arrays as one normalised RGB NCHW tensor, channels-last
        in memory: the frozen float and the int8 ``mobilenet_v3_small`` ran 3 and 8 % faster
        on it than on a contiguous NCHW batch (one-off microbench, one thread, 48 px).

        A float32 CPU model takes OpenCV's ``blobFromImages``: colour swap, normalisation
        and layout in one pass per image, without a stacked uint8 copy. With it a
        classifier's whole preprocessing took 336 against 439 µs a frame at 224 px from
        320x240, and 18.8 against 21.5 µs at 48 px from 28x28 (one-off, one thread, 40
        alternating rounds). Elsewhere the uint8 pixels go to the device and are
        normalised there (a quarter of the bytes to copy to a GPU)."""
        if self.device.type == "cpu" and self.dtype == torch.float32:
            nhwc = cv2.dnn.blobFromImagesWithParams(list(arrays), self._blob)
            return torch.from_numpy(nhwc).permute(0, 3, 1, 2)
        pixels = torch.from_numpy(np.stack(arrays)).to(self.device, non_blocking=True)
        batch = torch.addcmul(self._shift, pixels.permute(0, 3, 1, 2).flip(1), self._scale)
        return batch.contiguous(memory_format=torch.channels_last).to(self.dtype)


def image_sizes(images: Sequence[np.ndarray]) -> tuple[tuple[int, int], ...]:
    return tuple((int(img.shape[0]), int(img.shape[1])) for img in images)


def crop_short_side(size: int, crop_fraction: float) -> int:
    """The shorter side an image is resized to before its centre ``size`` crop."""
    return max(size, round(size / crop_fraction))


def resize_center_crop(image: np.ndarray, size: int, crop_fraction: float) -> np.ndarray:
    """The eval transform of classifiers: shorter side to ``size / crop_fraction`` (ImageNet's
    256 for 224), centre crop (a view; colours stay BGR, as :meth:`Predictor._to_batch` takes them)."""
    height, width = image.shape[:2]
    short = crop_short_side(size, crop_fraction)
    scale = short / min(height, width)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return resized[top : top + size, left : left + size]
