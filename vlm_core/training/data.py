"""Training data: one URI names a labeled dataset, split deterministically, with a hash.

URIs (``vlm train --data``):

- ``fashion-mnist`` (or ``fashion-mnist://``): the real Fashion-MNIST; its train split is
  split into train/validation, its test split is the held-out evaluation set.
- ``scenes://?n=3000&seed=0&width=320&height=240``: generated Fashion-MNIST scenes with
  exact boxes and masks; the held-out set comes from the Fashion-MNIST *test* items, so
  no item image is shared with training.
- a directory of class sub-directories (ImageFolder), for classification;
- ``coco:PATH.json[?images=DIR]`` (or a ``.json`` path), for detection and segmentation;
- ``voc:DIR``, a VOC-style segmentation tree;
- a label snapshot directory (``snapshot.json``), materialised from the ``vlm.labels``
  topic; the CLI turns ``labels://DATASET`` into one (see vlm_core.training.snapshot).
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Protocol
from urllib.parse import parse_qs, urlparse

import numpy as np

from vlm_core.contracts.snapshot import is_snapshot
from vlm_core.contracts.task import Task
from vlm_core.datasets import (
    FASHION_MNIST_CLASSES,
    SCENE_CLASSES,
    SCENE_SEGMENTATION_CLASSES,
    CocoDataset,
    ImageFolderDataset,
    Sample,
    SceneConfig,
    SceneGenerator,
    VocSegmentationDataset,
    load_fashion_mnist,
)
from vlm_core.datasets.fashion_mnist import fashion_mnist_dir
from vlm_core.datasets.scenes import SceneStyle
from vlm_core.datasets.snapshot import SnapshotDataset
from vlm_core.errors import DatasetError
from vlm_core.models.weights import sha256_file


class SampleSource(Protocol):
    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Sample: ...


class Subset:
    """Samples of ``source`` at ``indices``; optionally with labels replaced."""

    def __init__(self, source: SampleSource, indices: Sequence[int], labels: Sequence[int] | None = None) -> None:
        self.source = source
        self.indices = list(indices)
        self.labels = list(labels) if labels is not None else None

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Sample:
        sample = self.source[self.indices[index]]
        if self.labels is not None:
            sample = replace(sample, label=self.labels[index])
        return sample


class FashionMnistSamples:
    """Fashion-MNIST items as 3-channel frames (gray replicated), like a camera would send."""

    def __init__(self, split: str) -> None:
        self.data = load_fashion_mnist(split)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> Sample:
        gray = self.data.images[index]
        return Sample(np.repeat(gray[:, :, None], 3, axis=2), label=int(self.data.labels[index]))


class Concat:
    """The samples of several sources, one after the other."""

    def __init__(self, *sources: SampleSource) -> None:
        self.sources = sources

    def __len__(self) -> int:
        return sum(len(source) for source in self.sources)

    def __getitem__(self, index: int) -> Sample:
        if index < 0:
            index += len(self)
        for source in self.sources:
            if 0 <= index < len(source):
                return source[index]
            index -= len(source)
        raise IndexError("sample index out of range")


@dataclass
class TrainingData:
    """A dataset ready for training: train / validation / held-out splits of Samples."""

    uri: str
    task: Task
    class_names: tuple[str, ...]
    train: SampleSource
    validation: SampleSource
    #: Held-out evaluation split (the dataset's own test split where it has one).
    test: SampleSource
    content_hash: str

    def describe(self) -> str:
        return (
            f"{self.uri}: {len(self.train)} train / {len(self.validation)} validation / "
            f"{len(self.test)} held-out, {len(self.class_names)} classes, hash {self.content_hash[:12]}"
        )


def split_indices(
    count: int, validation_fraction: float, seed: int, keys: Sequence[str] | None = None
) -> tuple[list[int], list[int]]:
    """A deterministic split: each sample goes to validation by a hash of (seed, key), the
    key being its index or, where given, its stable id, so adding samples never moves
    existing ones between splits."""
    if not 0 < validation_fraction < 1:
        raise DatasetError(f"validation fraction must be between 0 and 1, got {validation_fraction}")
    threshold = int(validation_fraction * 2**32)
    train: list[int] = []
    validation: list[int] = []
    for i in range(count):
        bucket = zlib.crc32(f"{seed}:{keys[i] if keys is not None else i}".encode())
        (validation if bucket < threshold else train).append(i)
    return train, validation


def load_training_data(
    uri: str,
    task: Task,
    *,
    validation_fraction: float = 0.1,
    seed: int = 0,
    shuffle_labels: bool = False,
) -> TrainingData:
    """Resolve ``uri`` for ``task``. ``shuffle_labels`` permutes the training labels
    (classification only): a deliberately bad candidate for testing the promotion gate."""
    kind, source_uri = _kind(uri)
    _check_task(kind, uri, task)
    if kind == "fashion-mnist":
        full = FashionMnistSamples("train")
        train_idx, val_idx = split_indices(len(full), validation_fraction, seed)
        digest = _fashion_mnist_hash()
        data = TrainingData(
            uri,
            task,
            FASHION_MNIST_CLASSES,
            Subset(full, train_idx),
            Subset(full, val_idx),
            FashionMnistSamples("test"),
            _hash_text(f"fashion-mnist:{digest}:{seed}:{validation_fraction}"),
        )
    elif kind == "scenes":
        data = _scenes(source_uri, task, validation_fraction, seed)
    else:
        files = _open_files(kind, source_uri, uri, task)
        train_idx, val_idx = split_indices(
            len(files.samples), validation_fraction, seed, files.sample_ids if files.split_by_id else None
        )
        validation = Subset(files.samples, val_idx)
        # Datasets without a test split of their own: the validation split is also held out.
        data = TrainingData(
            uri, task, files.class_names, Subset(files.samples, train_idx), validation, validation, files.digest()
        )
    if shuffle_labels:
        data = _with_shuffled_labels(data, seed)
    if len(data.train) == 0 or len(data.validation) == 0:
        raise DatasetError(f"{uri} has too few samples to split into train and validation ({len(data.train)} train)")
    return data


@dataclass(frozen=True)
class LabeledSource:
    """Every sample of a dataset, unsplit, each with an id that stays the same across reads."""

    class_names: tuple[str, ...]
    samples: SampleSource
    sample_ids: list[str]
    #: What the content hash covers: the dataset's files, or a hash already known (snapshots).
    files: Path | None = None
    content_hash: str = ""
    #: Split by sample id instead of index (snapshots: new labels can sort anywhere).
    split_by_id: bool = False

    def digest(self) -> str:
        return self.content_hash or _hash_tree(self.files or Path())


def open_labeled(uri: str, task: Task) -> LabeledSource:
    """What ``vlm label push`` sends: the samples of an image folder, COCO file, VOC tree,
    snapshot, ``scenes://`` stream or Fashion-MNIST's train split."""
    kind, source_uri = _kind(uri)
    _check_task(kind, uri, task)
    if kind in ("fashion-mnist", "scenes"):
        data = load_training_data(uri, task)
        samples = data.train.source if isinstance(data.train, Subset) else data.train
        prefix = "train" if kind == "fashion-mnist" else "scene"
        return LabeledSource(data.class_names, samples, [f"{prefix}-{i:06d}" for i in range(len(samples))])
    return _open_files(kind, source_uri, uri, task)


def _open_files(kind: str, source_uri: str, uri: str, task: Task) -> LabeledSource:
    """The datasets that live in files: an image folder, COCO, VOC, a label snapshot."""
    if kind == "imagefolder":
        folder = ImageFolderDataset(source_uri)
        ids = [str(path.relative_to(folder.root)) for path, _ in folder.items]
        return LabeledSource(folder.class_names, folder, ids, files=Path(source_uri))
    if kind == "coco":
        parsed = urlparse(source_uri)
        coco = CocoDataset(parsed.path, parse_qs(parsed.query).get("images", [None])[0])
        names = ("background", *coco.class_names) if task is Task.SEGMENTATION else coco.class_names
        return LabeledSource(names, coco, [str(info["file_name"]) for info in coco.images], files=Path(parsed.path))
    if kind == "snapshot":
        snapshot = SnapshotDataset(source_uri)
        if snapshot.manifest.task != task.value:
            raise DatasetError(f"{uri} is a {snapshot.manifest.task} snapshot, not {task.value}")
        # The hash `vlm label snapshot` printed.
        return LabeledSource(
            snapshot.class_names, snapshot, snapshot.sample_ids, content_hash=snapshot.content_hash, split_by_id=True
        )
    voc = VocSegmentationDataset(source_uri)
    return LabeledSource(voc.class_names, voc, [path.stem for path in voc.items], files=Path(source_uri))


def _hash_tree(files: Path) -> str:
    paths = sorted(p for p in files.rglob("*") if p.is_file()) if files.is_dir() else [files]
    return _hash_files(paths, root=files if files.is_dir() else None)


def _kind(uri: str) -> tuple[str, str]:
    if uri in ("fashion-mnist", "fashion-mnist://"):
        return "fashion-mnist", uri
    if uri.startswith("scenes://"):
        return "scenes", uri
    if uri.startswith("coco:"):
        return "coco", uri[len("coco:") :]
    if uri.startswith("voc:"):
        return "voc", uri[len("voc:") :]
    if uri.startswith("labels://"):
        raise DatasetError(
            f"{uri} names Kafka labels, which must be materialised first",
            hint="pass it to `vlm train` / `vlm eval`, or run `vlm label snapshot` and use the directory",
        )
    path = Path(uri)
    if path.is_dir() and is_snapshot(path):
        return "snapshot", uri
    if path.suffix == ".json" and path.is_file():
        return "coco", uri
    if path.is_dir():
        return "imagefolder", uri
    raise DatasetError(
        f"cannot read training data from {uri!r}",
        hint="use fashion-mnist, scenes://?n=3000, an image-folder directory, coco:FILE.json, voc:DIR "
        "or labels://DATASET",
    )


def _check_task(kind: str, uri: str, task: Task) -> None:
    if kind == "fashion-mnist" and task is not Task.CLASSIFICATION:
        raise DatasetError(
            "fashion-mnist is a classification dataset", hint="use scenes:// for detection and segmentation"
        )
    if kind == "scenes" and task is Task.CLASSIFICATION:
        raise DatasetError("scenes:// trains detection and segmentation", hint="use fashion-mnist for classification")
    if kind == "imagefolder" and task is not Task.CLASSIFICATION:
        raise DatasetError(f"{uri} is an image-folder tree, which only labels classification")
    if kind == "coco" and task is Task.CLASSIFICATION:
        raise DatasetError("COCO annotations train detection or segmentation models")
    if kind == "voc" and task is not Task.SEGMENTATION:
        raise DatasetError(f"{uri} is a VOC segmentation tree; it trains segmentation models")


class _Scenes:
    def __init__(self, generator: SceneGenerator, count: int) -> None:
        self.generator = generator
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> Sample:
        return self.generator.scene(index)


def _scene_style(name: str, uri: str) -> SceneStyle:
    try:
        return SceneStyle(name)
    except ValueError:
        raise DatasetError(
            f"style={name!r} in {uri} is not a scene style", hint=f"use one of {', '.join(s.value for s in SceneStyle)}"
        ) from None


def _scenes(uri: str, task: Task, validation_fraction: float, seed: int) -> TrainingData:
    query = {k: v[-1] for k, v in parse_qs(urlparse(uri).query).items()}
    try:
        count = int(query.pop("n", 3000))
        scene_seed = int(query.pop("seed", seed))
        config = SceneConfig(
            width=int(query.pop("width", 320)),
            height=int(query.pop("height", 240)),
            max_items=int(query.pop("items", 4)),
            max_item_size=int(query.pop("max_size", SceneConfig.max_item_size)),
            crowded=query.pop("crowded", "0") == "1",
            style=_scene_style(query.pop("style", "base"), uri),
        )
    except ValueError as exc:
        raise DatasetError(f"bad number in {uri}: {exc}") from None
    if config.max_item_size < config.min_item_size:
        raise DatasetError(
            f"max_size={config.max_item_size} in {uri} is below the smallest item size, {config.min_item_size} px",
            hint=f"give max_size of at least {config.min_item_size}",
        )
    if query:
        known = "n, seed, width, height, items, max_size, crowded, style"
        raise DatasetError(f"unknown scenes:// options {sorted(query)}", hint=f"known: {known}")
    train_gen = SceneGenerator(config, seed=scene_seed)
    test_gen = SceneGenerator(SceneConfig(**{**config.__dict__, "split": "test"}), seed=scene_seed + 1)
    n_val = max(1, int(count * validation_fraction))
    names = SCENE_SEGMENTATION_CLASSES if task is Task.SEGMENTATION else SCENE_CLASSES
    digest = _fashion_mnist_hash()
    return TrainingData(
        uri,
        task,
        names,
        _Scenes(train_gen, count),
        Subset(_Scenes(test_gen, count + n_val), range(count, count + n_val)),
        _Scenes(test_gen, max(n_val, 200)),
        _hash_text(f"scenes:{digest}:{json.dumps(_hashed_config(config), sort_keys=True)}:{scene_seed}:{count}"),
    )


def _hashed_config(config: SceneConfig) -> dict[str, object]:
    """The config's fields, leaving out the style where it is the base one (so hashes made
    before styles existed hold)."""
    fields = dict(config.__dict__)
    if config.style is SceneStyle.BASE:
        del fields["style"]
    return fields


def with_replay(data: TrainingData, replay: TrainingData, samples: int) -> TrainingData:
    """``data`` with the first ``samples`` training samples of ``replay`` added to its train
    split: fine-tuning on new labels rehearses what the model knew (its validation and
    held-out splits stay ``data``'s own)."""
    if tuple(replay.class_names) != tuple(data.class_names):
        raise DatasetError(
            f"replay data {replay.uri} has other classes than {data.uri}", hint="replay data of the same classes"
        )
    rehearsed = Subset(replay.train, range(min(samples, len(replay.train))))
    digest = _hash_text(f"{data.content_hash}+replay:{replay.content_hash}:{len(rehearsed)}")
    return replace(data, train=Concat(data.train, rehearsed), content_hash=digest)


def _with_shuffled_labels(data: TrainingData, seed: int) -> TrainingData:
    if data.task is not Task.CLASSIFICATION:
        raise DatasetError("--shuffle-labels applies to classification data")
    if isinstance(data.train, Subset):
        train_source, indices = data.train.source, data.train.indices
    else:
        train_source, indices = data.train, list(range(len(data.train)))
    labels = [_label(train_source, i) for i in indices]
    permuted = np.random.default_rng(seed + 7919).permutation(np.asarray(labels)).tolist()
    return TrainingData(
        data.uri,
        data.task,
        data.class_names,
        Subset(train_source, indices, permuted),
        data.validation,
        data.test,
        _hash_text(f"{data.content_hash}:shuffled:{seed}"),
    )


def _label(source: SampleSource, index: int) -> int:
    """A sample's class without decoding its image where the source allows."""
    if isinstance(source, FashionMnistSamples):
        return int(source.data.labels[index])
    if isinstance(source, ImageFolderDataset):
        return source.items[index][1]
    label = source[index].label
    if label is None:
        raise DatasetError("--shuffle-labels needs class labels")
    return label


@lru_cache(maxsize=1)
def _fashion_mnist_hash() -> str:
    return _hash_files(sorted(fashion_mnist_dir().glob("*-ubyte.gz")))


def _hash_files(paths: Sequence[Path], root: Path | None = None) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(str(path.relative_to(root) if root else path.name).encode())
        digest.update(sha256_file(path).encode())
    return digest.hexdigest()


def _hash_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
