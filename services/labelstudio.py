"""``vlm label studio sync``: sampled frames become Label Studio tasks, completed
annotations become ``vlm.labels/v1`` records. Idempotent: a task is known by its frame
(``camera:seq``), a label by its annotation's id and update time, so a rerun adds nothing
and an edited annotation becomes one relabel record.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from vlm_core import labelstudio as ls
from vlm_core.config import LocalSettings, Topics
from vlm_core.contracts.dlq import FrameRef
from vlm_core.contracts.frame import Frame
from vlm_core.contracts.labels import LabeledSample, check_dataset_name
from vlm_core.contracts.task import Task
from vlm_core.contracts.to_label import ToLabel, ToLabelError
from vlm_core.errors import ConfigError, FrameError, InfrastructureError, LabelError, VlmError

IMPORT_CHUNK = 50


@dataclass
class SyncReport:
    project_id: int = 0
    tasks_created: int = 0
    tasks_known: int = 0
    #: Sampled frames no longer on the frames topic (retention), never turned into tasks.
    frames_expired: int = 0
    #: Sampled frames whose record is not the frame the reference names.
    frames_mismatched: int = 0
    labels_published: int = 0
    relabels: int = 0
    labels_unchanged: int = 0
    invalid: list[str] = field(default_factory=list)

    def describe(self) -> str:
        parts = [
            f"project {self.project_id}",
            f"{self.tasks_created} new tasks ({self.tasks_known} known)",
            f"{self.labels_published} labels published ({self.relabels} relabels, {self.labels_unchanged} unchanged)",
        ]
        if self.frames_expired:
            parts.append(f"{self.frames_expired} sampled frames expired from Kafka")
        if self.frames_mismatched:
            parts.append(f"{self.frames_mismatched} frame references did not match their record")
        if self.invalid:
            parts.append(f"{len(self.invalid)} annotations skipped ({self.invalid[0]})")
        return "; ".join(parts)


@dataclass(frozen=True)
class StudioAccess:
    url: str
    token: str

    @classmethod
    def resolve(cls, url: str | None, token: str | None, settings: LocalSettings) -> StudioAccess:
        """The given URL and token; else the local stack's Label Studio and its credentials."""
        if url and token:
            return cls(url.rstrip("/"), token)
        from services.localstack.stack import LabelStudioService

        service = LabelStudioService(settings)
        if not service.credentials_file.is_file():
            raise ConfigError(
                "no Label Studio to sync with",
                hint="start one with `vlm local up labelstudio`, or pass --url and --token (VLM_LABEL_STUDIO_TOKEN)",
            )
        creds = service.credentials()
        return cls((url or creds["url"]).rstrip("/"), token or creds["token"])

    def client(self) -> StudioClient:
        client = StudioClient(self.url, self.token)
        client.projects()  # fails here, with the reason, when the server or the token is wrong
        return client


class StudioClient:
    """The few calls of Label Studio's REST API the sync makes (``/api/...``, token auth).
    Label Studio's own SDK pins OpenCV 4.12 and NumPy 2.2 below this project's, so its
    HTTP API is used directly; it is the API the SDK wraps."""

    def __init__(self, url: str, token: str, *, timeout_s: float = 60.0) -> None:
        import httpx

        self.url = url
        self.http = httpx.Client(base_url=url, headers={"Authorization": f"Token {token}"}, timeout=timeout_s)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx

        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise InfrastructureError(
                f"cannot reach Label Studio at {self.url}: {exc}", hint="is it running? see `vlm local status`"
            ) from None
        if response.status_code in (401, 403):
            raise InfrastructureError(
                f"Label Studio at {self.url} refused the token ({response.status_code})",
                hint="pass the account's API token with --token or VLM_LABEL_STUDIO_TOKEN",
            )
        if response.status_code >= 400:
            raise InfrastructureError(
                f"Label Studio {method} {path} failed: {response.status_code} {response.text[:300]}"
            )
        return response.json() if response.content else None

    def _pages(self, path: str, key: str, **params: Any) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        page = 1
        while True:
            doc = self.request("GET", path, params={**params, "page": page, "page_size": 100})
            batch = doc if isinstance(doc, list) else doc.get(key, [])
            items.extend(batch)
            total = None if isinstance(doc, list) else doc.get("total", doc.get("count"))
            if isinstance(doc, list) or not batch or (total is not None and len(items) >= total):
                return items
            page += 1

    def projects(self) -> list[dict[str, Any]]:
        return self._pages("/api/projects", "results")

    def create_project(self, **fields: Any) -> dict[str, Any]:
        return dict(self.request("POST", "/api/projects", json=fields))

    def update_project(self, project_id: int, **fields: Any) -> None:
        self.request("PATCH", f"/api/projects/{project_id}", json=fields)

    def tasks(self, project_id: int) -> list[dict[str, Any]]:
        return self._pages("/api/tasks", "tasks", project=project_id, fields="all")

    def import_tasks(self, project_id: int, tasks: list[dict[str, Any]]) -> None:
        self.request("POST", f"/api/projects/{project_id}/import", json=tasks)

    def create_annotation(self, task_id: int, result: list[dict[str, Any]]) -> dict[str, Any]:
        return dict(self.request("POST", f"/api/tasks/{task_id}/annotations", json={"result": result}))

    def update_annotation(self, annotation_id: int, result: list[dict[str, Any]]) -> dict[str, Any]:
        return dict(self.request("PATCH", f"/api/annotations/{annotation_id}", json={"result": result}))


def read_to_label(bootstrap: str, topic: str) -> tuple[list[ToLabel], int]:
    """Every to-label document of ``topic`` (first copy per frame), and how many did not parse."""
    from services.kafka_io import read_to_end

    records, _ends = read_to_end(bootstrap, topic)
    samples: dict[str, ToLabel] = {}
    invalid = 0
    for record in records:
        try:
            sample = ToLabel.from_bytes(record.value)
        except ToLabelError:
            invalid += 1
            continue
        samples.setdefault(sample.ref, sample)
    return list(samples.values()), invalid


def fetch_frames(bootstrap: str, refs: Iterable[FrameRef]) -> dict[FrameRef, Frame | str]:
    """Each referenced frame from Kafka, or why not: ``expired`` (retention removed it) or
    ``mismatched`` (the record there is not a frame)."""
    from kafka import TopicPartition

    from services.kafka_io import consumer

    found: dict[FrameRef, Frame | str] = {}
    by_partition: dict[tuple[str, int], list[FrameRef]] = defaultdict(list)
    for ref in refs:
        by_partition[(ref.topic, ref.partition)].append(ref)
    reader = consumer(bootstrap, group_id=None, max_poll_records=20)
    try:
        for (topic, partition), wanted in by_partition.items():
            if partition not in (reader.partitions_for_topic(topic) or set()):
                found.update(dict.fromkeys(wanted, "expired"))
                continue
            tp = TopicPartition(topic, partition)
            reader.assign([tp])
            begin, end = reader.beginning_offsets([tp])[tp], reader.end_offsets([tp])[tp]
            for ref in sorted(wanted, key=lambda r: r.offset):
                if not begin <= ref.offset < end:
                    found[ref] = "expired"
                    continue
                reader.seek(tp, ref.offset)
                found[ref] = _read_at(reader, tp, ref.offset)
    finally:
        reader.close()
    return found


def _read_at(reader: Any, tp: Any, offset: int, timeout_s: float = 30.0) -> Frame | str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for record in reader.poll(timeout_ms=500).get(tp, []):
            if record.offset < offset:
                continue
            if record.offset > offset:  # compacted or deleted in between
                return "expired"
            try:
                return Frame.from_kafka(record.key, record.value, record.headers)
            except FrameError:
                return "mismatched"
    return "expired"


class StudioSync:
    """One dataset and task, synced between Kafka and one Label Studio project."""

    def __init__(
        self,
        client: StudioClient,
        *,
        bootstrap: str,
        topics: Topics,
        dataset: str,
        task: Task,
        class_names: Sequence[str],
        min_score: float = 0.25,
    ) -> None:
        self.client, self.bootstrap, self.topics = client, bootstrap, topics
        self.dataset, self.task = check_dataset_name(dataset), task
        self.class_names = tuple(class_names)
        self.min_score = min_score
        self.config = ls.label_config(task, self.class_names)

    def project(self) -> int:
        """The project's id, made or brought up to date with the labelling config."""
        title = ls.project_title(self.dataset, self.task)
        for project in self.client.projects():
            if project["title"] == title:
                if project.get("label_config") != self.config:
                    self.client.update_project(int(project["id"]), label_config=self.config)
                return int(project["id"])
        created = self.client.create_project(
            title=title,
            label_config=self.config,
            description=f"Frames the served models were unsure of ({self.task.value}), from vlm-stream.",
        )
        return int(created["id"])

    def tasks(self, project_id: int) -> list[dict[str, Any]]:
        return self.client.tasks(project_id)

    def sync(self) -> SyncReport:
        report = SyncReport(project_id=self.project())
        existing = self.tasks(report.project_id)
        self.import_new(report, existing)
        # Tasks imported just now have no annotations yet: one listing serves both steps.
        self.publish(report, existing)
        return report

    def import_new(self, report: SyncReport, existing: list[dict[str, Any]]) -> None:
        known = {t["data"].get(ls.REF_FIELD) for t in existing}
        samples, _invalid = read_to_label(self.bootstrap, self.topics.to_label)
        fresh = [s for s in samples if self.task.value in s.scores and s.ref not in known]
        report.tasks_known = len(known)
        frames = fetch_frames(self.bootstrap, [s.frame for s in fresh])
        batch: list[dict[str, Any]] = []
        for sample in fresh:
            frame = frames[sample.frame]
            if isinstance(frame, str) or (frame.camera_id, frame.seq) != (sample.camera_id, sample.seq):
                if frame == "expired":
                    report.frames_expired += 1
                else:
                    report.frames_mismatched += 1
                continue
            item: dict[str, Any] = {"data": ls.task_data(sample, frame.data, frame.encoding)}
            predicted = ls.prediction(sample, self.task, min_score=self.min_score)
            if predicted is not None:
                item["predictions"] = [predicted]
            batch.append(item)
        for start in range(0, len(batch), IMPORT_CHUNK):
            self.client.import_tasks(report.project_id, batch[start : start + IMPORT_CHUNK])
        report.tasks_created = len(batch)

    def publish(self, report: SyncReport, tasks: list[dict[str, Any]]) -> None:
        from services.kafka_io import read_to_end
        from services.labels import send_acknowledged

        records, _ends = read_to_end(self.bootstrap, self.topics.labels)
        sources: dict[bytes, str | None] = {}
        for record in records:
            if record.value is None:
                sources.pop(record.key, None)
                continue
            try:
                sources[record.key] = LabeledSample.from_kafka(record.key, record.value, record.headers).source
            except LabelError:
                continue
        outgoing: list[LabeledSample] = []
        for task in tasks:
            done = ls.completed(int(task["id"]), task.get("annotations") or [])
            if done is None:
                continue
            try:
                sample = ls.labeled_sample(
                    done,
                    task["data"],
                    project_id=report.project_id,
                    dataset=self.dataset,
                    task=self.task,
                    class_names=self.class_names,
                )
            except LabelError as exc:
                report.invalid.append(str(exc))
                continue
            if sample.key in sources and sources[sample.key] == sample.source:
                report.labels_unchanged += 1
                continue
            if sample.key in sources:
                report.relabels += 1
            outgoing.append(sample)
        send_acknowledged(self.bootstrap, self.topics.labels, (s.to_kafka().fields() for s in outgoing))
        report.labels_published = len(outgoing)

    def follow(self, interval_s: float, on_report: Callable[[SyncReport], None], stop: Callable[[], bool]) -> None:
        """Sync every ``interval_s`` until ``stop()``: the long-running poller."""
        while not stop():
            on_report(self.sync())
            deadline = time.monotonic() + interval_s
            while time.monotonic() < deadline and not stop():
                time.sleep(0.2)


def class_names_for(task: Task, model: str | None, samples: Sequence[ToLabel], settings: LocalSettings) -> list[str]:
    """The classes of ``model`` (NAME or NAME@V) in the registry; without one, of the model
    the sampled frames name for the task."""
    from vlm_core.registry import ModelRegistry, RegistryError

    named = model or next((s.models[task.value] for s in samples if task.value in s.models), None)
    if named is None:
        raise ConfigError(
            f"no sampled {task.value} frames name a model to take the classes from",
            hint="pass --model NAME[@VERSION] or --classes A,B,C",
        )
    try:
        version = ModelRegistry(settings.registry_dir).resolve(named)
    except RegistryError as exc:
        raise ConfigError(f"classes of {named}: {exc}", hint="pass --model NAME[@VERSION] or --classes A,B,C") from None
    return list(version.class_names)


@dataclass
class AnnotateReport:
    annotated: int = 0
    #: Tasks whose frame carries no ground truth (a real camera's), or whose truth has no
    #: single class (classification): left for a person.
    without_truth: int = 0
    #: Tasks whose frame has left Kafka or is not the frame named.
    frames_missing: int = 0
    #: Annotations made, by the domain of the frame (``FrameTruth.domain``).
    by_domain: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def add(self, other: AnnotateReport) -> None:
        self.annotated += other.annotated
        self.without_truth += other.without_truth
        self.frames_missing += other.frames_missing
        for domain, count in other.by_domain.items():
            self.by_domain[domain] += count


class TruthAnnotator:
    """Stands in for a person: annotates every task of a project that has no annotation from
    the ground truth its frame carries (``vlm-truth``, synthetic cameras only), through Label
    Studio's HTTP API as the labelling page does. The loop uses it; no real labelling team
    would."""

    def __init__(self, client: StudioClient, *, bootstrap: str, task: Task) -> None:
        self.client, self.bootstrap, self.task = client, bootstrap, task

    def annotate(self, project_id: int, tasks: list[dict[str, Any]] | None = None) -> AnnotateReport:
        report = AnnotateReport()
        listed = self.client.tasks(project_id) if tasks is None else tasks
        todo = [t for t in listed if ls.completed(int(t["id"]), t.get("annotations") or []) is None]
        refs: dict[int, FrameRef] = {}
        for task in todo:
            try:
                refs[int(task["id"])] = FrameRef.parse(str(task["data"].get("frame", "")))
            except VlmError:  # a task the sync did not make: no frame to look up
                report.without_truth += 1
        frames = fetch_frames(self.bootstrap, refs.values())
        for task in todo:
            ref = refs.get(int(task["id"]))
            if ref is None:
                continue
            frame = frames[ref]
            if isinstance(frame, str):
                report.frames_missing += 1
                continue
            result = (
                None if frame.truth is None else ls.truth_annotation(frame.truth, self.task, frame.width, frame.height)
            )
            if frame.truth is None or result is None:
                report.without_truth += 1
                continue
            self.client.create_annotation(int(task["id"]), result)
            report.annotated += 1
            report.by_domain[frame.truth.domain] += 1
        return report
