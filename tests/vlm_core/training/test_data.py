from pathlib import Path

import cv2
import numpy as np
import pytest

from vlm_core.contracts.task import Task
from vlm_core.errors import DatasetError
from vlm_core.training.data import load_training_data, split_indices


def test_split_is_deterministic_disjoint_and_stable_when_data_grows() -> None:
    train, val = split_indices(1000, 0.2, seed=3)
    assert (train, val) == split_indices(1000, 0.2, seed=3)
    assert not set(train) & set(val) and len(train) + len(val) == 1000
    assert 150 < len(val) < 250
    grown_train, grown_val = split_indices(1500, 0.2, seed=3)
    assert set(val) <= set(grown_val) and set(train) <= set(grown_train)
    assert split_indices(1000, 0.2, seed=4)[1] != val


def test_fashion_mnist_splits_and_hash() -> None:
    data = load_training_data("fashion-mnist", Task.CLASSIFICATION)
    assert len(data.train) + len(data.validation) == 60000 and len(data.test) == 10000
    sample = data.train[0]
    assert sample.image.shape == (28, 28, 3) and 0 <= sample.label < 10
    assert data.content_hash == load_training_data("fashion-mnist", Task.CLASSIFICATION).content_hash
    assert data.content_hash != load_training_data("fashion-mnist", Task.CLASSIFICATION, seed=1).content_hash


def test_shuffled_labels_permute_training_labels_only() -> None:
    data = load_training_data("fashion-mnist", Task.CLASSIFICATION)
    shuffled = load_training_data("fashion-mnist", Task.CLASSIFICATION, shuffle_labels=True)
    labels = [data.train[i].label for i in range(2000)]
    moved = [shuffled.train[i].label for i in range(2000)]
    assert sorted(labels) != labels and sum(a != b for a, b in zip(labels, moved, strict=True)) > 1500
    assert np.array_equal(data.train[5].image, shuffled.train[5].image)
    assert [data.test[i].label for i in range(50)] == [shuffled.test[i].label for i in range(50)]
    assert shuffled.content_hash != data.content_hash


def test_scenes_hold_out_items_from_the_test_split() -> None:
    data = load_training_data("scenes://?n=50&width=160&height=120", Task.DETECTION)
    assert len(data.train) == 50 and len(data.validation) == 5
    sample = data.validation[0]
    assert sample.image.shape == (120, 160, 3) and len(sample.boxes) == len(sample.box_labels) >= 1
    seg = load_training_data("scenes://?n=50", Task.SEGMENTATION)
    assert seg.class_names[0] == "background" and seg.train[0].mask is not None


def test_image_folder(tmp_path: Path) -> None:
    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
        for i in range(10):
            cv2.imwrite(str(tmp_path / name / f"{i}.png"), np.full((8, 8, 3), i * 20, np.uint8))
    data = load_training_data(str(tmp_path), Task.CLASSIFICATION, validation_fraction=0.3)
    assert data.class_names == ("cat", "dog") and len(data.train) + len(data.validation) == 20


@pytest.mark.parametrize(
    ("uri", "task", "message"),
    [
        ("nowhere/at/all", Task.CLASSIFICATION, "cannot read training data"),
        ("fashion-mnist", Task.DETECTION, "classification dataset"),
        ("scenes://?n=10", Task.CLASSIFICATION, "detection and segmentation"),
        ("scenes://?n=ten", Task.DETECTION, "bad number"),
        ("scenes://?colour=red", Task.DETECTION, "unknown scenes:// options"),
        ("scenes://?max_size=20", Task.DETECTION, "below the smallest item size"),
    ],
)
def test_bad_data_uris_get_clear_errors(uri: str, task: Task, message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        load_training_data(uri, task)


def test_open_labeled_gives_stable_ids_and_checks_the_task(tmp_path: Path) -> None:
    from vlm_core.training.data import open_labeled

    scenes = open_labeled("scenes://?n=5&width=64&height=48", Task.DETECTION)
    assert scenes.sample_ids == [f"scene-{i:06d}" for i in range(5)] and len(scenes.samples) == 5
    assert np.array_equal(
        scenes.samples[3].image, open_labeled("scenes://?n=5&width=64&height=48", Task.DETECTION).samples[3].image
    )
    with pytest.raises(DatasetError, match="labels classification"):
        (tmp_path / "cat").mkdir()
        open_labeled(str(tmp_path), Task.SEGMENTATION)
    with pytest.raises(DatasetError, match="materialised first"):
        load_training_data("labels://pets", Task.CLASSIFICATION)


def test_scenes_max_size_bounds_the_items() -> None:
    data = load_training_data("scenes://?n=20&max_size=60", Task.DETECTION)
    for i in range(20):
        boxes = np.asarray(data.train[i].boxes).reshape(-1, 4)
        assert (boxes[:, 2:] - boxes[:, :2]).max() <= 60


def test_replay_adds_the_first_samples_of_the_old_data_to_the_train_split_only() -> None:
    from vlm_core.training.data import with_replay

    new = load_training_data("scenes://?n=20&style=small", Task.DETECTION)
    old = load_training_data("scenes://?n=50", Task.DETECTION)
    mixed = with_replay(new, old, 30)
    assert len(mixed.train) == len(new.train) + 30
    assert np.array_equal(mixed.train[len(new.train)].image, old.train[0].image)
    assert np.array_equal(mixed.train[-1].image, old.train[29].image)
    assert mixed.test is new.test and mixed.validation is new.validation
    assert mixed.content_hash not in (new.content_hash, old.content_hash)
    with pytest.raises(IndexError):
        mixed.train[len(mixed.train)]
    with pytest.raises(DatasetError, match="other classes"):
        with_replay(new, load_training_data("scenes://?n=20", Task.SEGMENTATION), 5)
