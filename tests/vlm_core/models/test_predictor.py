import numpy as np
import pytest

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
