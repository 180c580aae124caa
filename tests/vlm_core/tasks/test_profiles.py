"""Profiles own what differs by task: the built-in three, and a toy fourth task registered
here, in one module, that the predictor builder, the pipeline config, the stream
processor, the result contract, the training loops and evaluation all take as it is."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vlm_core.contracts.result import ModelRef, Result, TaskOutput, validate_result
from vlm_core.contracts.sample import Sample
from vlm_core.contracts.task import Task
from vlm_core.models.predictor import Predictor, PreparedBatch, image_sizes
from vlm_core.models.spec import ModelSpec
from vlm_core.models.zoo import Architecture, register_architecture
from vlm_core.tasks import (
    Scorer,
    TaskDefaults,
    TaskProfile,
    TrainingInput,
    TrainingOptions,
    build_predictor,
    get_profile,
    profiles,
)


def test_built_in_profiles_cover_every_task_once() -> None:
    assert {p.task for p in profiles()} >= {Task.CLASSIFICATION, Task.DETECTION, Task.SEGMENTATION}
    for profile in profiles():
        assert get_profile(profile.task) is profile and get_profile(profile.task.value) is profile
        assert profile.primary_metric and profile.noun and profile.deployment_name
    assert get_profile(Task.SEGMENTATION).ignore_index == 255
    assert get_profile(Task.DETECTION).evaluation_overrides() == {"score_threshold": 0.05}


# -- a toy fourth task: the brightness of a frame, in one module's worth of code --------
BRIGHTNESS = "brightness"


@dataclass(frozen=True)
class Brightness:
    model: ModelRef
    level: float

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model.to_json(), "level": round(self.level, 4)}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Brightness:
        return cls(ModelRef.from_json(doc["model"]), doc["level"])


class TinyBrightnessNet(nn.Module):
    def __init__(self, _num_classes: int) -> None:
        super().__init__()
        self.head = nn.Linear(3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.mean(dim=(2, 3))).squeeze(1)


class BrightnessPredictor(Predictor):
    # ``task`` is set when the fixture registers the task: registering at import time
    # would show the toy task to every test of the session.
    default_input_size = 16

    def _preprocess(self, images: Sequence[np.ndarray]) -> PreparedBatch:
        small = [
            np.ascontiguousarray(img[:: max(1, img.shape[0] // 16), :: max(1, img.shape[1] // 16)][:16, :16])
            for img in images
        ]
        return PreparedBatch(self._to_batch(small), image_sizes(images))

    def _infer(self, batch: PreparedBatch) -> list[TaskOutput]:
        assert isinstance(batch.inputs, torch.Tensor)
        return [Brightness(self.model_ref, float(v)) for v in self.model(batch.inputs).tolist()]


class BrightnessScorer(Scorer):
    def __init__(self) -> None:
        self.errors: list[float] = []

    def add(self, sample: Sample, output: TaskOutput) -> None:
        assert isinstance(output, Brightness)
        self.errors.append(abs(output.level - float(sample.image.mean() / 255)))

    def metrics(self) -> dict[str, float]:
        return {"mae": float(np.mean(self.errors)) if self.errors else 0.0}


class BrightnessProfile(TaskProfile):
    noun = "brightness meter"
    deployment_name = "BrightnessMeter"
    primary_metric = "mae"
    predictor = BrightnessPredictor
    output_type = Brightness
    defaults = TaskDefaults("tiny_brightness", "tiny_brightness", 1, 4, 1e-2, 16)

    def training_transform(self, shape: TrainingInput, train: bool) -> Callable[..., Any]:
        return lambda rgb: torch.from_numpy(rgb[:16, :16]).permute(2, 0, 1).float() / 255

    def training_item(self, sample: Sample, rgb: np.ndarray, transform: Callable[..., Any]) -> Any:
        return transform(rgb), torch.tensor(float(sample.image.mean() / 255))

    def loss(self, model: nn.Module, batch: Any, options: TrainingOptions) -> torch.Tensor:
        inputs, targets = batch
        return F.mse_loss(model(inputs), targets)

    def validation_counts(self, model: nn.Module, batches: Iterable[Any], classes: int) -> torch.Tensor:
        errors = torch.zeros(2, dtype=torch.float64)
        for x, y in batches:
            errors += torch.tensor([float((model(x) - y).abs().sum()), len(y)], dtype=torch.float64)
        return errors

    def validation_metrics(self, counts: torch.Tensor) -> dict[str, float]:
        total, count = counts.tolist()
        return {"val_mae": total / max(1.0, count)}

    def scorer(self, class_count: int) -> Scorer:
        return BrightnessScorer()


@pytest.fixture
def toy_task() -> Iterator[Task]:
    from vlm_core.contracts import result as result_contract
    from vlm_core.models import zoo
    from vlm_core.tasks import _PROFILES, register_profile

    task = Task.register(BRIGHTNESS)
    BrightnessPredictor.task = BrightnessProfile.task = task
    register_architecture(Architecture("tiny_brightness", task, TinyBrightnessNet))
    register_profile(BrightnessProfile())
    yield Task(BRIGHTNESS)
    # leave the other tests the three built-in tasks
    _PROFILES.pop(Task(BRIGHTNESS))
    result_contract._OUTPUT_TYPES.pop(BRIGHTNESS)
    zoo.ARCHITECTURES.pop("tiny_brightness")
    Task._known.pop(BRIGHTNESS)


def _frames(n: int) -> list[np.ndarray]:
    return [np.full((24, 32, 3), 20 * i, np.uint8) for i in range(n)]


def test_a_fourth_task_registered_in_one_module_runs_through_the_whole_library(toy_task: Task) -> None:
    from vlm_core.contracts.frame import Frame
    from vlm_core.pipeline import PipelineConfig
    from vlm_core.training.evaluate import evaluate
    from vlm_core.training.loops import TorchDataset, TrainSettings, collate, training_loss, validation_counts

    spec = ModelSpec(toy_task, "tiny_brightness", class_names=("level",), name="bright", version="1")
    predictor = build_predictor(spec, device="cpu")
    outputs = predictor.predict(_frames(3))
    assert [type(o) for o in outputs] == [Brightness] * 3

    # the pipeline config serves it and routes cameras to it
    config = PipelineConfig.parse(
        {
            "models": {BRIGHTNESS: {"spec": spec.to_dict()}},
            "cameras": {"default": {"tasks": [BRIGHTNESS]}},
            "processor": {"batch_size": 4},
        }
    )
    assert list(config.models) == [toy_task] and config.cameras.default.tasks == (toy_task,)

    # the stream processor runs it, and its output is part of the result contract
    from tests.vlm_core.test_stream import TOPICS, Done, FakeConsumer, FakeProducer, Rec
    from vlm_core.stream import StreamProcessor, kafka_sinks

    records = []
    for i, image in enumerate(_frames(5)):
        rec = Frame.from_image(image, camera_id="cam", seq=i, capture_ts_ms=1_000).to_kafka()
        records.append(Rec("frames", 0, i, rec.key, rec.value, rec.headers))
    consumer, producer = FakeConsumer(records), FakeProducer()
    processor = StreamProcessor(
        consumer,
        {toy_task: lambda images: Done(predictor.predict(images))},
        config.cameras,
        kafka_sinks(producer, TOPICS),
        batch_size=4,
        clock_ms=lambda: 2_000,
    )
    for _ in range(5):
        processor.step()
    processor.drain()
    docs = [json.loads(v) for t, _k, v, _h in producer.sent if t == "results"]
    assert [d["seq"] for d in docs] == list(range(5))
    for doc in docs:
        validate_result(doc)
        assert set(doc["tasks"]) == {BRIGHTNESS}
    parsed = Result.from_json(docs[2])
    assert isinstance(parsed.outputs[toy_task], Brightness)

    # training: the generic loops take the profile's transform, batching, loss, validation
    samples = [Sample(image) for image in _frames(8)]
    dataset = TorchDataset(samples, toy_task, TrainingInput(), train=True)
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, collate_fn=collate(toy_task))
    model = TinyBrightnessNet(1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    settings = TrainSettings(toy_task, epochs=1, batch_size=4, lr=0.5, input_size=None)
    first = training_loss(model, toy_task, next(iter(loader)), settings)
    for _ in range(30):
        for batch in loader:
            optimizer.zero_grad()
            training_loss(model, toy_task, batch, settings).backward()
            optimizer.step()
    assert float(training_loss(model, toy_task, next(iter(loader)), settings).detach()) < float(first.detach())
    assert "val_mae" in get_profile(toy_task).validation_metrics(validation_counts(model, toy_task, loader, 1))

    # evaluation scores it with the profile's scorer, and the gate reads its primary metric
    evaluation = evaluate(predictor, samples)
    assert set(evaluation.metrics) == {"mae"} and evaluation.primary == evaluation.metrics["mae"]


def test_unknown_tasks_are_typed_errors() -> None:
    from vlm_core.errors import ConfigError

    with pytest.raises(ValueError, match="not a task"):
        Task("counting")
    with pytest.raises(ConfigError, match="no profile"):
        get_profile("counting")
