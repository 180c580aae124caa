"""Knowledge distillation: the blended loss, and the profiles that train against a teacher."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from vlm_core.contracts.task import Task
from vlm_core.tasks import Distillation, TrainingOptions, get_profile


class Recording(nn.Module):
    """A fixed teacher that remembers the input side it was given."""

    def __init__(self, logits: torch.Tensor, key: str | None = None) -> None:
        super().__init__()
        self.logits, self.key = logits, key
        self.seen: list[tuple[int, ...]] = []

    def forward(self, inputs: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        self.seen.append(tuple(inputs.shape))
        return {self.key: self.logits} if self.key else self.logits


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    temperature=st.floats(0.5, 8.0),
    weight=st.floats(0.05, 1.0),
)
def test_the_soft_term_is_zero_only_where_the_student_matches_the_teacher(
    seed: int, temperature: float, weight: float
) -> None:
    generator = torch.Generator().manual_seed(seed)
    teacher = torch.randn(4, 5, generator=generator)
    distill = Distillation(nn.Identity(), weight=weight, temperature=temperature)
    task_loss = torch.tensor(2.0)
    matched = distill.loss(task_loss, teacher.clone(), teacher)
    assert matched.item() == pytest.approx((1 - weight) * 2.0, abs=1e-5)
    other = distill.loss(task_loss, torch.randn(4, 5, generator=generator), teacher)
    assert other.item() > matched.item()


def test_the_soft_term_is_hintons_kl_and_moves_only_the_student() -> None:
    torch.manual_seed(0)
    student = torch.randn(3, 4, requires_grad=True)
    teacher = torch.randn(3, 4, requires_grad=True)
    distill = Distillation(nn.Identity(), weight=1.0, temperature=2.0)
    loss = distill.loss(torch.tensor(0.0), student, teacher)
    expected = F.kl_div(
        F.log_softmax(student / 2, 1), F.log_softmax(teacher / 2, 1), log_target=True, reduction="batchmean"
    )
    assert loss.item() == pytest.approx(4 * expected.item(), rel=1e-5)
    loss.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0 and teacher.grad is None


def test_a_classifier_trains_against_its_teacher_at_the_teachers_input_size() -> None:
    torch.manual_seed(0)
    student = nn.Sequential(nn.Flatten(1), nn.Linear(3 * 32 * 32, 4))
    inputs, targets = torch.rand(2, 3, 32, 32), torch.tensor([0, 1])
    teacher = Recording(torch.tensor([[5.0, 0, 0, 0], [0, 5.0, 0, 0]]))
    profile = get_profile(Task.CLASSIFICATION)
    plain = profile.loss(student, (inputs, targets), TrainingOptions(label_smoothing=0.0))
    options = TrainingOptions(label_smoothing=0.0, distillation=Distillation(teacher, input_size=48, weight=0.5))
    blended = profile.loss(student, (inputs, targets), options)
    assert teacher.seen == [(2, 3, 48, 48)]  # resized to what the teacher was trained on
    soft = Distillation(teacher, weight=1.0).loss(torch.tensor(0.0), student(inputs), teacher.logits)
    assert blended.item() == pytest.approx(0.5 * plain.item() + 0.5 * soft.item(), rel=1e-5)


def test_a_segmenter_matches_its_teacher_per_pixel_at_the_students_resolution() -> None:
    torch.manual_seed(0)
    student = nn.Conv2d(3, 3, 1)

    class Segmenter(nn.Module):
        def forward(self, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"out": student(inputs)}

    inputs, targets = torch.rand(2, 3, 16, 16), torch.randint(0, 3, (2, 16, 16))
    coarse = torch.randn(2, 3, 4, 4)  # a teacher that predicts at a quarter of the resolution
    teacher = Recording(coarse, key="out")
    options = TrainingOptions(distillation=Distillation(teacher, input_size=64, weight=1.0))
    loss = get_profile(Task.SEGMENTATION).loss(Segmenter(), (inputs, targets), options)
    assert teacher.seen == [(2, 3, 16, 16)]  # the crop as it is, not resized
    upsampled = F.interpolate(coarse, size=(16, 16), mode="bilinear", align_corners=False)
    expected = Distillation(teacher, weight=1.0).loss(torch.tensor(0.0), student(inputs), upsampled)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_only_class_score_tasks_distil() -> None:
    assert get_profile(Task.CLASSIFICATION).distills and get_profile(Task.SEGMENTATION).distills
    assert not get_profile(Task.DETECTION).distills
