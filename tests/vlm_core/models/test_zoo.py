from __future__ import annotations

import os
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from vlm_core.contracts.result import Classification, Detections, Segmentation
from vlm_core.errors import ConfigError, UnknownArchitectureError, UnsafeWeightsError, WeightsError
from vlm_core.models import ModelSpec, Task, architectures, build_model, get_architecture
from vlm_core.models.weights import load_state_dict, save_state_dict, sha256_file
from vlm_core.tasks import build_predictor

REQUIRED = {
    Task.CLASSIFICATION: {
        "mobilenet_v3_small",
        "mobilenet_v3_large",
        "resnet18",
        "resnet50",
        "efficientnet_b0",
        "mobilenet_v2",
    },
    Task.DETECTION: {
        "ssdlite320_mobilenet_v3_large",
        "fasterrcnn_mobilenet_v3_large_320_fpn",
        "fasterrcnn_mobilenet_v3_large_fpn",
    },
    Task.SEGMENTATION: {"lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large"},
}
FRAMES = [
    np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8),
    np.random.default_rng(1).integers(0, 256, (151, 97, 3), dtype=np.uint8),
]


def names_for(task: Task) -> tuple[str, ...]:
    return ("background", "a", "b") if task is Task.SEGMENTATION else ("a", "b", "c")


@pytest.mark.parametrize("task", list(Task))
def test_required_architectures_exist(task: Task) -> None:
    assert REQUIRED[task] <= set(architectures(task))


@pytest.mark.parametrize("arch", architectures())
def test_build_and_predict_shapes(arch: str) -> None:
    torch.manual_seed(0)
    task = get_architecture(arch).task
    spec = ModelSpec(task, arch, class_names=names_for(task), score_threshold=0.0, max_detections=5, top_k=2)
    predictor = build_predictor(spec, device="cpu")
    outputs = predictor.predict(FRAMES)
    assert len(outputs) == len(FRAMES)
    for frame, out in zip(FRAMES, outputs, strict=True):
        height, width = frame.shape[:2]
        if task is Task.CLASSIFICATION:
            assert isinstance(out, Classification)
            assert len(out.top_k) == 2
            assert out.top_k[0].score >= out.top_k[1].score
            assert out.top_k[0].label in spec.class_names
        elif task is Task.DETECTION:
            assert isinstance(out, Detections)
            assert len(out.detections) <= 5
            for det in out.detections:
                x1, y1, x2, y2 = det.box
                assert 0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height
                assert det.label in spec.class_names
        else:
            assert isinstance(out, Segmentation)
            assert sum(c.pixel_fraction for c in out.classes) <= 1.0 + 1e-6
            assert all(c.class_id != 0 for c in out.classes)  # background is not reported
            for cls in out.classes:
                assert (cls.mask.height, cls.mask.width) == (height, width)
                assert cls.mask.area() == pytest.approx(cls.pixel_fraction * height * width, abs=1)
        assert out.model.name == arch


def test_detection_boxes_are_in_frame_pixels() -> None:
    """The same scene at two resolutions gives boxes scaled by the resolution ratio."""
    torch.manual_seed(3)
    spec = ModelSpec(
        Task.DETECTION, "ssdlite320_mobilenet_v3_large", class_names=("a",), score_threshold=0.0, max_detections=1
    )
    predictor = build_predictor(spec, device="cpu")
    base = cv2.GaussianBlur(np.random.default_rng(7).integers(0, 256, (320, 320, 3), dtype=np.uint8), (9, 9), 0)
    large = cv2.resize(base, (960, 640), interpolation=cv2.INTER_LINEAR)  # x3 wide, x2 tall
    small_box = np.array(predictor.predict([base])[0].detections[0].box)
    large_box = np.array(predictor.predict([large])[0].detections[0].box)
    expected = small_box * np.array([3, 2, 3, 2])
    assert np.allclose(large_box, expected, atol=6.0), (large_box, expected)


def test_unknown_architecture() -> None:
    with pytest.raises(UnknownArchitectureError) as info:
        build_model(ModelSpec(Task.CLASSIFICATION, "alexnet9000", class_names=("a",)))
    assert "mobilenet_v3_small" in info.value.hint


def test_task_arch_mismatch() -> None:
    with pytest.raises(ConfigError, match="detection model"):
        build_model(ModelSpec(Task.CLASSIFICATION, "ssdlite320_mobilenet_v3_large", class_names=("a",)))


def test_spec_validation() -> None:
    with pytest.raises(ConfigError):
        ModelSpec("painting", "resnet18")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        ModelSpec(Task.DETECTION, "x", score_threshold=2.0)
    with pytest.raises(ConfigError, match="unknown model spec field"):
        ModelSpec.from_dict({"task": "detection", "arch": "x", "colour": "red"})
    spec = ModelSpec.from_dict({"task": "detection", "arch": "ssdlite320_mobilenet_v3_large", "class_names": ["a"]})
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ConfigError, match="class_names"):
        build_model(ModelSpec(Task.CLASSIFICATION, "resnet18"))


def test_weights_roundtrip_safetensors_and_pt(tmp_path: Path) -> None:
    spec = ModelSpec(Task.CLASSIFICATION, "mobilenet_v3_small", class_names=("a", "b"))
    model, _ = build_model(spec)
    digest = save_state_dict(model.state_dict(), tmp_path / "w.safetensors")
    assert digest == sha256_file(tmp_path / "w.safetensors")
    torch.save(model.state_dict(), tmp_path / "w.pt")
    for name in ("w.safetensors", "w.pt"):
        loaded, _ = build_model(spec.with_(weights=str(tmp_path / name)))
        for key, value in model.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value)


class Exploit:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, ("echo pwned",))


def test_pickle_with_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    with open(path, "wb") as fh:
        pickle.dump({"state_dict": {"w": Exploit()}}, fh)
    with pytest.raises(UnsafeWeightsError) as info:
        load_state_dict(path)
    assert "safetensors" in info.value.hint


def test_full_model_pickle_is_refused(tmp_path: Path) -> None:
    model, _ = build_model(ModelSpec(Task.CLASSIFICATION, "mobilenet_v3_small", class_names=("a",)))
    torch.save(model, tmp_path / "model.pt")  # a pickled nn.Module needs its classes to load
    with pytest.raises(UnsafeWeightsError):
        load_state_dict(tmp_path / "model.pt")


def test_weights_errors(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="not found"):
        load_state_dict(tmp_path / "missing.pt")
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(WeightsError):
        load_state_dict(tmp_path / "junk.safetensors")
    model, _ = build_model(ModelSpec(Task.CLASSIFICATION, "mobilenet_v3_small", class_names=("a", "b")))
    save_state_dict(model.state_dict(), tmp_path / "two.safetensors")
    with pytest.raises(WeightsError, match="do not fit"):
        build_model(
            ModelSpec(
                Task.CLASSIFICATION,
                "mobilenet_v3_small",
                class_names=("a", "b", "c"),
                weights=str(tmp_path / "two.safetensors"),
            )
        )


@pytest.mark.parametrize(
    ("arch", "task", "expected"),
    [
        ("mobilenet_v2", Task.CLASSIFICATION, 312),  # every backbone tensor, not the 10-class head
        ("fasterrcnn_mobilenet_v2", Task.DETECTION, None),
        ("lraspp_mobilenet_v2", Task.SEGMENTATION, None),
    ],
)
def test_imagenet_mobilenet_v2_initialises_backbones(arch: str, task: Task, expected: int | None) -> None:
    import torch

    from vlm_core.models.weights import IMAGENET_MOBILENET_V2, load_state_dict
    from vlm_core.models.zoo import get_architecture, load_initial_weights

    names = tuple(f"c{i}" for i in range(10))
    model = get_architecture(arch).build(len(names) + (1 if task is Task.DETECTION else 0))
    copied = load_initial_weights(model, get_architecture(arch), IMAGENET_MOBILENET_V2)
    assert copied >= 100 and (expected is None or copied == expected)
    source = load_state_dict(IMAGENET_MOBILENET_V2)
    first_conv = next(v for k, v in model.state_dict().items() if k.endswith("0.0.weight"))
    assert torch.equal(first_conv, source["features.0.0.weight"])


def test_a_whole_checkpoint_of_the_same_model_is_fine_tuned_not_just_its_backbone(tmp_path: Path) -> None:
    import torch

    from vlm_core.models.weights import save_state_dict
    from vlm_core.models.zoo import get_architecture, load_initial_weights

    arch = get_architecture("fasterrcnn_mobilenet_v2")
    torch.manual_seed(1)
    trained = arch.build(4)
    path = tmp_path / "detector.safetensors"
    save_state_dict(trained.state_dict(), path)
    torch.manual_seed(2)
    fresh = arch.build(4)
    copied = load_initial_weights(fresh, arch, str(path))
    assert copied == len(trained.state_dict())
    for key, tensor in trained.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], tensor), key  # heads and RPN too
    other_classes = arch.build(7)  # a different head: only the backbone fits
    partial = load_initial_weights(other_classes, arch, str(path))
    assert 0 < partial < len(other_classes.state_dict())


def test_the_small_image_classifier_keeps_the_whole_frame_and_its_resolution() -> None:
    from vlm_core.models.predictor import resize_center_crop

    arch = get_architecture("vgg6_bn")
    assert arch.crop_fraction == 1.0 and get_architecture("resnet18").crop_fraction == 224 / 256
    framed = np.zeros((28, 28, 3), np.uint8)
    framed[0, :] = 255
    assert resize_center_crop(framed, 32, arch.crop_fraction)[0].min() == 255
    assert resize_center_crop(framed, 32, 224 / 256)[0].max() == 0
    features = arch.build(10)[:-4]  # up to the global pooling
    assert features(torch.zeros(1, 3, 32, 32)).shape == (1, 128, 8, 8)
    spec = ModelSpec(Task.CLASSIFICATION, "vgg6_bn", class_names=names_for(Task.CLASSIFICATION), input_size=32)
    assert build_predictor(spec, device="cpu").decode_short_side() == 32
