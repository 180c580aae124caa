from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import write_colour_folder
from vlm_core.contracts.task import Task
from vlm_core.datasets import Sample
from vlm_core.models import ModelSpec, build_model, get_architecture
from vlm_core.tasks import TrainingInput, get_profile
from vlm_core.training.data import Subset, load_training_data
from vlm_core.training.loops import TorchDataset, collate, validation_counts


def _frame() -> np.ndarray:
    frame = np.zeros((60, 80, 3), np.uint8)
    frame[10:30, 5:25] = 255
    return frame


def test_detection_flip_moves_boxes_with_pixels() -> None:
    torch.manual_seed(0)
    sample = Sample(_frame(), boxes=np.array([[5, 10, 25, 30]], np.float32), box_labels=np.array([3]))
    dataset = TorchDataset([sample], Task.DETECTION, TrainingInput(), train=True)
    seen = set()
    for _ in range(20):
        image, target = dataset[0]
        x1, y1, x2, y2 = target["boxes"][0].tolist()
        assert target["labels"].tolist() == [4]  # background is 0
        assert image[:, int(y1) + 2 : int(y2) - 2, int(x1) + 2 : int(x2) - 2].min() > 0.5
        seen.add(x1)
    assert seen == {5.0, 55.0}, "both flipped and unflipped boxes appear"


def test_segmentation_mask_follows_resize_and_classification_shapes() -> None:
    mask = np.zeros((60, 80), np.uint8)
    mask[10:30, 5:25] = 2
    image, target = TorchDataset([Sample(_frame(), mask=mask)], Task.SEGMENTATION, TrainingInput(32), train=False)[0]
    assert image.shape == (3, 32, 32) and target.shape == (32, 32) and target.dtype == torch.int64
    assert set(target.unique().tolist()) == {0, 2}
    tensor, label = TorchDataset([Sample(_frame(), label=7)], Task.CLASSIFICATION, TrainingInput(48), train=True)[0]
    assert tensor.shape == (3, 48, 48) and label == 7


@pytest.mark.parametrize("train", [True, False])
def test_transforms_normalise_like_the_predictor(train: bool) -> None:
    from vlm_core.models.predictor import IMAGENET_MEAN, IMAGENET_STD

    white = get_profile(Task.CLASSIFICATION).training_transform(TrainingInput(32), train)(
        np.full((40, 40, 3), 255, np.uint8)
    )
    assert torch.allclose(white[:, 0, 0], (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD), atol=1e-5)
    from torchvision import tv_tensors

    image = tv_tensors.Image(torch.full((3, 4, 4), 255, dtype=torch.uint8))
    boxes = tv_tensors.BoundingBoxes([[0, 0, 2, 2]], format="XYXY", canvas_size=(4, 4))
    transform = get_profile(Task.DETECTION).training_transform(TrainingInput(), train)
    scaled, target = transform(image, {"boxes": boxes, "labels": torch.tensor([1])})
    assert scaled.dtype == torch.float32 and scaled.max() <= 1.0 and len(target["boxes"]) == 1


def test_a_whole_image_crop_keeps_the_border_and_pads_for_its_random_shifts() -> None:
    framed = np.zeros((28, 28, 3), np.uint8)
    framed[:, :2] = 255  # a sleeve at the left edge
    profile = get_profile(Task.CLASSIFICATION)
    whole = profile.training_transform(TrainingInput(32, crop_fraction=1.0), False)(framed)
    imagenet = profile.training_transform(TrainingInput(32), False)(framed)
    assert whole.shape == imagenet.shape == (3, 32, 32)
    assert whole[0, :, 0].min() > 0 and imagenet[0, :, 0].max() < whole[0, :, 0].min()
    shifted = [profile.training_transform(TrainingInput(32, crop_fraction=1.0), True)(framed) for _ in range(40)]
    assert all(t.shape == (3, 32, 32) for t in shifted)
    assert any(not torch.equal(t, whole) and not torch.equal(t, whole.flip(-1)) for t in shifted)


@pytest.mark.parametrize(
    ("task", "arch", "size"),
    [
        (Task.CLASSIFICATION, "vgg6_bn", 32),
        (Task.DETECTION, "fasterrcnn_mobilenet_v2", None),
        (Task.SEGMENTATION, "lraspp_mobilenet_v3_large", 96),
    ],
)
def test_validation_counts_of_the_workers_shards_add_up_to_the_whole_splits(
    tmp_path: Path, task: Task, arch: str, size: int | None
) -> None:
    """Training workers each validate every world-size-th sample and sum their counts: the
    figure must be the one a single process gets on the whole split."""
    uri = write_colour_folder(tmp_path, per_class=4) if task is Task.CLASSIFICATION else "scenes://?n=10&items=3"
    data = load_training_data(uri, task)
    torch.manual_seed(0)
    model, _ = build_model(ModelSpec(task, arch, class_names=data.class_names))
    shape = TrainingInput(size, None, get_architecture(arch).crop_fraction)
    classes = len(data.class_names)

    def counts(indices: range) -> torch.Tensor:
        dataset = TorchDataset(Subset(data.train, indices), task, shape, train=False)
        loader = torch.utils.data.DataLoader(dataset, batch_size=3, collate_fn=collate(task))
        return validation_counts(model, task, loader, classes)

    whole = counts(range(len(data.train)))
    shards = [counts(range(rank, len(data.train), 2)) for rank in range(2)]
    assert int(whole.sum()) > 0 and torch.equal(shards[0] + shards[1], whole)
    assert torch.equal(counts(range(0)), torch.zeros_like(whole))  # a worker with no share adds nothing
    figure = get_profile(task).validation_metrics(whole)
    assert len(figure) == 1 and next(iter(figure)).startswith("val_") and 0 <= next(iter(figure.values())) <= 1
