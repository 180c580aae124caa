import numpy as np
import pytest
import torch

from vlm_core.contracts.result import Segmentation
from vlm_core.models import ModelSpec, Task
from vlm_core.tasks import build_predictor


@pytest.mark.parametrize("task", list(Task))
def test_predict_is_infer_of_preprocess_and_prepared_batches_concatenate(task: Task) -> None:
    from vlm_core.models.predictor import PreparedBatch

    arch = {
        Task.CLASSIFICATION: "mobilenet_v3_small",
        Task.DETECTION: "ssdlite320_mobilenet_v3_large",
        Task.SEGMENTATION: "lraspp_mobilenet_v3_large",
    }[task]
    names = ("background", "a", "b") if task is Task.SEGMENTATION else ("a", "b")
    predictor = build_predictor(ModelSpec(task, arch, class_names=names, score_threshold=0.0), device="cpu")
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in ((120, 160), (200, 100), (90, 90))]
    whole = predictor.predict(frames)
    halves = PreparedBatch.concat([predictor.preprocess(frames[:1]), predictor.preprocess(frames[1:])])
    assert halves.sizes == ((120, 160), (200, 100), (90, 90))
    assert predictor.infer(halves) == whole
    assert predictor.infer(PreparedBatch((), ())) == []


@pytest.mark.parametrize(
    ("task", "arch"), [(Task.CLASSIFICATION, "mobilenet_v3_small"), (Task.SEGMENTATION, "lraspp_mobilenet_v3_large")]
)
def test_a_frame_decoded_smaller_keeps_its_own_size_in_the_outputs(task: Task, arch: str) -> None:
    from vlm_core.contracts.frame import Frame, jpeg_scale

    names = ("background", "a", "b") if task is Task.SEGMENTATION else ("a", "b")
    predictor = build_predictor(ModelSpec(task, arch, class_names=names), device="cpu")
    y, x = np.mgrid[0:720, 0:1280]
    image = np.stack([x % 256, y % 256, (x + y) % 256], axis=-1).astype(np.uint8)
    frame = Frame.from_image(image, camera_id="cam", seq=0)
    scale = jpeg_scale(frame.width, frame.height, predictor.decode_short_side())
    assert scale == 2
    small = predictor.preprocess([frame.pixels(scale)], [(frame.height, frame.width)])
    whole = predictor.preprocess([frame.pixels()])
    assert small.sizes == whole.sizes == ((720, 1280),)
    assert isinstance(small.inputs, torch.Tensor) and small.inputs.shape == whole.inputs.shape
    if task is Task.SEGMENTATION:  # masks at the frame's own size, not the decoded one
        logits = torch.zeros(1, 3, 40, 40)
        logits[:, 1, :, :20] = 1.0  # class "a" on the left half
        predictor.model = lambda _inputs: {"out": logits}  # type: ignore[assignment]
        output = predictor.infer(small)[0]
        assert isinstance(output, Segmentation)
        assert {(c.mask.height, c.mask.width) for c in output.classes} == {(720, 1280)}
        (left,) = output.classes
        assert left.label == "a" and 0.5 <= left.pixel_fraction <= 0.5 + 32 / 1280
        mask = left.mask.decode()  # the edge is bilinear: within one model pixel (32 px) of the middle
        assert mask[:, :640].all() and not mask[:, 640 + 32 :].any()


@pytest.mark.parametrize(
    ("task", "arch"),
    [
        (Task.CLASSIFICATION, "mobilenet_v3_small"),
        (Task.CLASSIFICATION, "vgg6_bn"),
        (Task.DETECTION, "ssdlite320_mobilenet_v3_large"),
        (Task.DETECTION, "fasterrcnn_mobilenet_v3_large_320_fpn"),
        (Task.SEGMENTATION, "lraspp_mobilenet_v3_large"),
    ],
)
def test_the_frozen_graph_computes_what_the_network_does_at_any_batch_and_frame_size(task: Task, arch: str) -> None:
    from vlm_core.models.spec import Graph

    torch.manual_seed(0)
    names = ("background", "a", "b") if task is Task.SEGMENTATION else ("a", "b")
    frozen = build_predictor(ModelSpec(task, arch, class_names=names), device="cpu")
    eager = build_predictor(ModelSpec(task, arch, class_names=names), device="cpu", graph=Graph.EAGER)
    assert frozen.graph is Graph.FROZEN and eager.graph is Graph.EAGER
    assert isinstance(frozen.model, torch.jit.ScriptModule) or isinstance(
        frozen.model.get_submodule("backbone"), torch.jit.ScriptModule
    )
    # The network as built is untouched, and the two predictors share its weights.
    assert frozen.network is eager.network is eager.model
    assert not any(isinstance(m, torch.jit.ScriptModule) for m in eager.network.modules())
    rng = np.random.default_rng(1)
    for sizes in (((240, 320),), ((720, 1280), (100, 60), (240, 320))):
        batch = eager.preprocess([rng.integers(0, 255, (*size, 3), dtype=np.uint8) for size in sizes])
        with torch.inference_mode():
            if task is Task.DETECTION:  # the detector's own resize and NMS are not traced
                images = [torch.rand(3, h, w) for h, w in ((320, 320), (320, 480))]
                want = [eager.network.backbone(i[None]) for i in images]
                got = [frozen.model.backbone(i[None]) for i in images]
                pairs = [(w[k], g[k]) for w, g in zip(want, got, strict=True) for k in w]
            else:
                want, got = eager.model(batch.inputs), frozen.model(batch.inputs)
                pairs = [(want["out"], got["out"])] if task is Task.SEGMENTATION else [(want, got)]
        for w, g in pairs:
            assert w.shape == g.shape
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4 * float(w.abs().max()))
        assert eager.infer(batch) is not None and len(frozen.infer(batch)) == len(batch)


def test_a_network_whose_trace_would_not_hold_runs_eagerly(caplog: pytest.LogCaptureFixture) -> None:
    from torch import nn

    from vlm_core.models.spec import Graph

    class DataDependent(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2 if bool(x.sum() > 0) else x  # a Python branch on the data

    predictor = build_predictor(ModelSpec(Task.CLASSIFICATION, "mobilenet_v3_small", class_names=("a",)), "cpu")
    network = DataDependent()
    assert predictor._frozen(network) is network
    assert predictor.graph is Graph.EAGER
    assert "mobilenet_v3_small runs eagerly: tracing it failed" in caplog.text
    assert "Converting a tensor to a Python boolean" in caplog.text


def test_a_frozen_graph_warms_up_at_every_batch_size_its_budget_allows() -> None:
    from vlm_core.models.spec import Graph

    spec = ModelSpec(Task.CLASSIFICATION, "vgg6_bn", class_names=("a", "b"), input_size=32)
    frozen = build_predictor(spec, device="cpu")
    seen: list[int] = []
    frozen.warmup = lambda batch_size=1, size=(240, 320): seen.append(batch_size) or 0.0  # type: ignore[method-assign]
    assert frozen.warmup_sizes(4, budget_s=60) == [4, 1, 2, 3] == seen
    assert frozen.warmup_sizes(4, budget_s=0) == [4]  # the largest size always, the rest within the budget
    # The size requests come at first, then the largest: merged requests reach it.
    assert frozen.warmup_sizes(4, budget_s=60, request_frames=2) == [2, 4, 1, 3]
    assert frozen.warmup_sizes(4, budget_s=60, request_frames=8) == [4, 1, 2, 3]
    eager = build_predictor(spec, device="cpu", graph=Graph.EAGER)
    assert eager.warmup_sizes(4, budget_s=60) == [4]  # builds nothing per shape
    assert eager.warmup_sizes(4, budget_s=60, request_frames=2) == [2]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["opencv-pass", "on-the-device"])
def test_a_batch_is_normalised_as_training_normalises_it(dtype: torch.dtype) -> None:
    from torchvision.transforms import v2

    from vlm_core.models.predictor import IMAGENET_MEAN, IMAGENET_STD

    predictor = build_predictor(ModelSpec(Task.CLASSIFICATION, "mobilenet_v3_small", class_names=("a", "b")), "cpu")
    predictor.dtype = dtype  # what a bfloat16 version or a GPU computes in takes the device path
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (12, 10, 3), dtype=np.uint8) for _ in range(3)]
    batch = predictor._to_batch(arrays)  # BGR, as frames decode
    normalise = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    expected = torch.stack([normalise(torch.from_numpy(a[..., ::-1].copy()).permute(2, 0, 1)) for a in arrays])
    assert batch.dtype == dtype and batch.shape == (3, 3, 12, 10)
    assert batch.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(batch.float(), expected, rtol=0, atol=1e-5 if dtype == torch.float32 else 2e-2)
