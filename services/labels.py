"""``vlm label``: send labeled data to the labels topic, and materialise it for training."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from vlm_core.contracts.frame import Encoding
from vlm_core.contracts.labels import LabeledSample, check_dataset_name, label_key
from vlm_core.contracts.task import Task
from vlm_core.errors import DatasetError
from vlm_core.training.data import open_labeled
from vlm_core.training.snapshot import Snapshot, materialise

_FILE_ENCODINGS = {".jpg": Encoding.JPEG, ".jpeg": Encoding.JPEG, ".png": Encoding.PNG}


def push_labels(
    bootstrap: str,
    topic: str,
    source_uri: str,
    *,
    dataset: str,
    task: Task,
    limit: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> int:
    """Send every sample of ``source_uri`` as a ``vlm.labels/v1`` record; returns the count
    once the broker has acknowledged all of them."""
    check_dataset_name(dataset)
    source = open_labeled(source_uri, task)
    total = len(source.samples) if limit is None else min(limit, len(source.samples))

    def records() -> Iterator[tuple[bytes, bytes | None, list[tuple[str, bytes]]]]:
        for i in range(total):
            sample = source.samples[i]
            path = Path(sample.source) if sample.source else None
            encoding = _FILE_ENCODINGS.get(path.suffix.lower()) if path and path.is_file() else None
            record = LabeledSample.from_sample(
                sample,
                dataset=dataset,
                sample_id=source.sample_ids[i],
                task=task,
                class_names=source.class_names,
                image_bytes=path.read_bytes() if path and encoding else None,
                encoding=encoding or Encoding.PNG,
            ).to_kafka()
            yield record.fields()
            if on_progress:
                on_progress(i + 1, total)

    return send_acknowledged(bootstrap, topic, records(), linger_ms=20)


def delete_labels(bootstrap: str, topic: str, *, dataset: str, sample_ids: list[str]) -> None:
    send_acknowledged(bootstrap, topic, ((label_key(dataset, sample_id), None, []) for sample_id in sample_ids))


def send_acknowledged(
    bootstrap: str, topic: str, records: Iterable[tuple[bytes, bytes | None, list[tuple[str, bytes]]]], **config: Any
) -> int:
    """Send (key, value, headers) records; returns their count once the broker acknowledged all."""
    from services.kafka_io import producer

    prod = producer(bootstrap, **config)
    try:
        futures = [prod.send(topic, key=key, value=value, headers=headers) for key, value, headers in records]
        for future in futures:
            future.get(timeout=60)
    finally:
        prod.close(timeout=10)
    return len(futures)


def snapshot_labels(bootstrap: str, topic: str, *, dataset: str, task: Task, root: Path) -> Snapshot:
    from services.kafka_io import read_to_end

    records, offsets = read_to_end(bootstrap, topic)
    return materialise(
        ((r.key, r.value, r.headers) for r in records),
        dataset=dataset,
        task=task,
        root=root,
        source={"topic": topic, "end_offsets": offsets},
    )


def resolve_data(uri: str, task: Task, *, bootstrap: str, topic: str, root: Path) -> tuple[str, Snapshot | None]:
    """``labels://DATASET[?topic=T]`` becomes the directory of a fresh snapshot; any other
    URI is returned as it is."""
    if not uri.startswith("labels://"):
        return uri, None
    parsed = urlparse(uri)
    query: dict[str, Any] = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
    unknown = set(query) - {"topic"}
    if unknown or not parsed.netloc:
        raise DatasetError(f"bad labels URI {uri!r}", hint="use labels://DATASET or labels://DATASET?topic=TOPIC")
    snapshot = snapshot_labels(bootstrap, query.get("topic", topic), dataset=parsed.netloc, task=task, root=root)
    return str(snapshot.path), snapshot
