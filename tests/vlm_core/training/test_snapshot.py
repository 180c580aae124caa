from pathlib import Path

import numpy as np
import pytest

from vlm_core.contracts.labels import LabeledSample, label_key
from vlm_core.contracts.task import Task
from vlm_core.datasets import SCENE_SEGMENTATION_CLASSES, Sample, SceneConfig, SceneGenerator
from vlm_core.errors import DatasetError
from vlm_core.training.data import load_training_data
from vlm_core.training.snapshot import materialise

CLASSES = ("cat", "dog", "fox")


def _record(sample_id: str, label: int, dataset: str = "pets", seed: int = 0) -> tuple:
    image = np.random.default_rng(seed).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    labeled = LabeledSample.from_sample(
        Sample(image, label=label), dataset=dataset, sample_id=sample_id, task=Task.CLASSIFICATION, class_names=CLASSES
    )
    record = labeled.to_kafka()
    return record.key, record.value, record.headers


def test_latest_label_wins_tombstones_delete_and_bad_records_are_counted(tmp_path: Path) -> None:
    records = [_record(f"s{i}", i % 3, seed=i) for i in range(20)]
    records += [
        _record("s0", 2, seed=0),  # relabel
        (label_key("pets", "s1"), None, []),  # delete
        _record("x", 0, dataset="other"),  # another dataset: ignored
        (b"pets/bad", b"not an image", [("vlm-schema", b"vlm.labels/v1")]),
    ]
    snapshot = materialise(records, dataset="pets", task=Task.CLASSIFICATION, root=tmp_path)
    assert snapshot.samples == 19 and snapshot.class_names == CLASSES
    assert snapshot.skipped == {"bad_header": 1}
    data = load_training_data(str(snapshot.path), Task.CLASSIFICATION, validation_fraction=0.3)
    assert len(data.train) + len(data.validation) == 19
    by_id = {data.train[i].source: data.train[i].label for i in range(len(data.train))}
    by_id |= {data.validation[i].source: data.validation[i].label for i in range(len(data.validation))}
    assert by_id["s0"] == 2 and "s1" not in by_id


def test_hash_depends_on_content_not_arrival_order(tmp_path: Path) -> None:
    records = [_record(f"s{i}", i % 3, seed=i) for i in range(8)]
    first = materialise(records, dataset="pets", task=Task.CLASSIFICATION, root=tmp_path)
    again = materialise(list(reversed(records)), dataset="pets", task=Task.CLASSIFICATION, root=tmp_path)
    assert again.content_hash == first.content_hash and again.reused and again.path == first.path
    grown = materialise([*records, _record("s9", 1, seed=9)], dataset="pets", task=Task.CLASSIFICATION, root=tmp_path)
    assert grown.content_hash != first.content_hash and not grown.reused
    relabeled = materialise(
        [*records, _record("s3", 1, seed=3)], dataset="pets", task=Task.CLASSIFICATION, root=tmp_path
    )
    assert relabeled.content_hash != first.content_hash
    assert sorted(p.name for p in (tmp_path / "pets").iterdir()) == sorted(
        {first.content_hash[:16], grown.content_hash[:16], relabeled.content_hash[:16]}
    )


def test_segmentation_snapshot_reads_back_masks(tmp_path: Path) -> None:
    generator = SceneGenerator(SceneConfig(width=64, height=48), seed=2)
    records = []
    for i in range(6):
        record = LabeledSample.from_sample(
            generator.scene(i),
            dataset="scenes",
            sample_id=str(i),
            task=Task.SEGMENTATION,
            class_names=SCENE_SEGMENTATION_CLASSES,
        ).to_kafka()
        records.append((record.key, record.value, record.headers))
    snapshot = materialise(records, dataset="scenes", task=Task.SEGMENTATION, root=tmp_path)
    data = load_training_data(str(snapshot.path), Task.SEGMENTATION, validation_fraction=0.5)
    sample = data.train[0]
    assert np.array_equal(sample.mask, generator.scene(int(sample.source)).mask)
    with pytest.raises(DatasetError, match="is a segmentation snapshot"):
        load_training_data(str(snapshot.path), Task.DETECTION)


def test_no_valid_samples_is_an_error_with_a_hint(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no valid classification samples") as info:
        materialise([_record("a", 0, dataset="other")], dataset="pets", task=Task.CLASSIFICATION, root=tmp_path)
    assert "vlm label push" in info.value.hint
