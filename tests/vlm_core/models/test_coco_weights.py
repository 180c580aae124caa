"""torchvision's COCO weights load offline from torch's hub cache, under torchvision's own
file name, weights-only; without the file, the error says which file goes where."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from vlm_core.errors import WeightsError
from vlm_core.models import ModelSpec, Task
from vlm_core.models.zoo import build_model, cached_weights_file, get_architecture, pretrained_available

ARCHS = [("ssdlite320_mobilenet_v3_large", Task.DETECTION), ("lraspp_mobilenet_v3_large", Task.SEGMENTATION)]


def place_weights(arch: str) -> dict[str, torch.Tensor]:
    """A state dict of the pretrained model's shape (random values), where torch's cache keeps it."""
    weights = torchvision.models.get_model_weights(arch).DEFAULT
    torch.manual_seed(0)
    model = torchvision.models.get_model(
        arch, weights=None, weights_backbone=None, num_classes=len(weights.meta["categories"])
    )
    state = {k: v.clone() for k, v in model.state_dict().items()}
    target = cached_weights_file(get_architecture(arch))
    assert target.name == Path(weights.url).name  # torchvision's own file name
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, target)
    return state


@pytest.mark.parametrize(("arch", "task"), ARCHS)
def test_cached_coco_weights_load_offline_with_their_categories(torch_home: Path, arch: str, task: Task) -> None:
    assert not pretrained_available(arch)
    state = place_weights(arch)
    assert pretrained_available(arch)
    model, classes = build_model(ModelSpec(task, arch, weights="pretrained"))
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    categories = torchvision.models.get_model_weights(arch).DEFAULT.meta["categories"]
    assert list(classes) == (categories[1:] if task is Task.DETECTION else categories)
    if task is Task.DETECTION:
        assert "person" in classes and "car" in classes


def test_without_the_file_offline_the_error_names_the_file(torch_home: Path) -> None:
    arch = "ssdlite320_mobilenet_v3_large"
    with pytest.raises(WeightsError) as error:
        build_model(ModelSpec(Task.DETECTION, arch, weights="pretrained"))
    assert str(cached_weights_file(get_architecture(arch))) in (error.value.hint or "")


def test_a_file_of_the_wrong_shape_is_refused(torch_home: Path) -> None:
    arch = "ssdlite320_mobilenet_v3_large"
    target = cached_weights_file(get_architecture(arch))
    target.parent.mkdir(parents=True)
    torch.save({"not": torch.zeros(1)}, target)
    with pytest.raises(WeightsError, match="does not fit"):
        build_model(ModelSpec(Task.DETECTION, arch, weights="pretrained"))
