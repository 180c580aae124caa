"""The label snapshot contract ``vlm.snapshot/v1``: a directory of ``snapshot.json`` (this
manifest), ``samples.jsonl`` and the image and mask files it names."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vlm_core.contracts.schema import validate
from vlm_core.errors import DatasetError

SNAPSHOT_SCHEMA = "vlm.snapshot/v1"
SNAPSHOT_SCHEMA_FILE = "snapshot-v1.json"
MANIFEST = "snapshot.json"
SAMPLES = "samples.jsonl"


@dataclass(frozen=True)
class SnapshotManifest:
    dataset: str
    task: str
    #: sha256 over the class list and every sample's id, image, annotation and mask.
    content_hash: str
    class_names: tuple[str, ...]
    samples: int
    skipped: dict[str, int] = field(default_factory=dict)
    #: Where the labels came from (topic, end offsets).
    source: dict[str, Any] = field(default_factory=dict)
    created: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"schema": SNAPSHOT_SCHEMA, **asdict(self), "class_names": list(self.class_names)}

    def write(self, directory: Path) -> None:
        (directory / MANIFEST).write_text(json.dumps(self.to_json(), indent=2))

    @classmethod
    def read(cls, directory: Path) -> SnapshotManifest:
        path = directory / MANIFEST
        try:
            doc = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DatasetError(f"cannot read the snapshot manifest {path}: {exc}") from None
        try:
            validate(doc, SNAPSHOT_SCHEMA_FILE, DatasetError)
        except DatasetError as exc:
            raise DatasetError(f"{path} is not a {SNAPSHOT_SCHEMA} manifest: {exc}") from None
        doc.pop("schema")
        return cls(**{**doc, "class_names": tuple(doc["class_names"])})


def is_snapshot(path: Path) -> bool:
    return (path / MANIFEST).is_file()
