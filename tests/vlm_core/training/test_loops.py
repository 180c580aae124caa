import numpy as np
import pytest
import torch

from vlm_core.contracts.task import Task
from vlm_core.datasets import Sample
from vlm_core.tasks import TrainingInput, get_profile
from vlm_core.training.loops import TorchDataset


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
