"""Labels on the real Kafka: `vlm label push`, relabel, delete, snapshot, and `vlm train` on them."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import cv2
import numpy as np
import pytest

from services import kafka_io
from vlm_core.contracts.labels import LabeledSample
from vlm_core.contracts.task import Task
from vlm_core.datasets import Sample, load_fashion_mnist
from vlm_core.datasets.snapshot import SnapshotDataset
from vlm_core.registry import ModelRegistry

pytestmark = pytest.mark.integration

CLASSES = ("Trouser", "Bag", "Sneaker")


def vlm(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "COLUMNS": "200", **env},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.fixture
def labeled_folder(tmp_path: Path) -> Path:
    """Real Fashion-MNIST test items, 20 per class, as an image folder."""
    root = tmp_path / "folder"
    data = load_fashion_mnist("test")
    for name in CLASSES:
        (root / name).mkdir(parents=True)
        for n, index in enumerate(np.flatnonzero(data.labels == data.class_names.index(name))[:20]):
            cv2.imwrite(str(root / name / f"{n}.png"), data.images[index])
    return root


def test_push_relabel_delete_snapshot_and_train(
    kafka_bootstrap: str, ray_address: str, topic_name: str, labeled_folder: Path, tmp_path: Path
) -> None:
    kafka_io.ensure_topics(kafka_bootstrap, [kafka_io.TopicSpec(topic_name, partitions=1)])
    dataset = f"shelf-{uuid.uuid4().hex[:6]}"
    env = {"VLM_DATASETS_DIR": str(tmp_path / "datasets"), "VLM_REGISTRY_DIR": str(tmp_path / "registry")}
    common = ["--topic", topic_name, "--bootstrap", kafka_bootstrap]
    pushed = vlm(
        "label", "push", str(labeled_folder), "--dataset", dataset, "--task", "classification", *common, env=env
    )
    assert "sent 60 labeled classification samples" in pushed.stdout

    # A relabel, a deletion and a broken record arrive later; another dataset shares the topic.
    producer = kafka_io.producer(kafka_bootstrap)
    image = cv2.imread(str(labeled_folder / "Bag" / "0.png"))
    relabel = LabeledSample.from_sample(
        Sample(image, label=2), dataset=dataset, sample_id="Bag/0.png", task=Task.CLASSIFICATION, class_names=CLASSES
    ).to_kafka()
    producer.send(topic_name, key=relabel.key, value=relabel.value, headers=relabel.headers)
    producer.send(topic_name, key=f"{dataset}/junk".encode(), value=b"\xff\xd8 not a jpeg", headers=[])
    other = LabeledSample.from_sample(
        Sample(image, label=0), dataset="other", sample_id="x", task=Task.CLASSIFICATION, class_names=CLASSES
    ).to_kafka()
    producer.send(topic_name, key=other.key, value=other.value, headers=other.headers)
    producer.flush()
    producer.close()
    vlm("label", "delete", "Sneaker/3.png", "--dataset", dataset, *common, env=env)

    shown = vlm("label", "snapshot", "--dataset", dataset, "--task", "classification", *common, env=env).stdout
    digest = re.search(r"content hash ([0-9a-f]{64})", shown)
    assert digest and "59 classification samples" in shown and "1 bad_header" in shown, shown
    snapshot_dir = tmp_path / "datasets" / dataset / digest.group(1)[:16]
    snapshot = SnapshotDataset(snapshot_dir)
    labels = {sid: item["label"] for sid, item in zip(snapshot.sample_ids, snapshot.items, strict=True)}
    # The folder's classes sort as Bag, Sneaker, Trouser; the relabel declared this dataset's order.
    assert snapshot.class_names == CLASSES
    assert labels["Bag/0.png"] == CLASSES.index("Sneaker") and "Sneaker/3.png" not in labels
    manifest = json.loads((snapshot_dir / "snapshot.json").read_text())
    assert manifest["source"]["topic"] == topic_name and manifest["skipped"] == {"bad_header": 1}
    again = vlm("label", "snapshot", "--dataset", dataset, "--task", "classification", *common, env=env).stdout
    assert digest.group(1) in again and "unchanged, reused" in again

    trained = vlm(
        "train",
        "--task",
        "classification",
        "--data",
        f"labels://{dataset}?topic={topic_name}",
        "--arch",
        "mobilenet_v2",
        "--workers",
        "1",
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--input-size",
        "64",
        "--storage",
        f"file://{tmp_path / 'train'}",  # a URI, as for s3:// or gs://: pyarrow storage
        env=env,
    ).stdout
    assert f"registered {dataset}-classifier@1" in trained, trained
    version = ModelRegistry(tmp_path / "registry").get(f"{dataset}-classifier", 1)
    assert version.dataset_hash == digest.group(1) and version.class_names == CLASSES
    assert 0.0 <= version.metrics["accuracy"] <= 1.0
    assert list((tmp_path / "train").glob("*/checkpoint_*")), "checkpoints went to the storage URI"
