"""The least-privilege table: who may do what on which of a pipeline's resources."""

from __future__ import annotations

from kafka.admin import ACLOperation, ACLResourcePatternType, ResourceType

from services.kafka_io.acls import pipeline_grants
from vlm_core.config import Topics

TOPICS = Topics(frames="cam.frames", results="cam.results", labels="cam.labels", to_label="cam.to_label")


def operations(principal: str, resource: ResourceType, name: str) -> set[ACLOperation]:
    return {
        acl.operation
        for grant in pipeline_grants(TOPICS, "group-a")
        if grant.principal == principal
        for acl in grant.acls()
        if acl.resource_pattern.resource_type == resource and acl.resource_pattern.resource_name == name
    }


def test_ingest_writes_only_frames() -> None:
    assert ACLOperation.WRITE in operations("ingest", ResourceType.TOPIC, "cam.frames")
    written = {
        grant.name
        for grant in pipeline_grants(TOPICS, "group-a")
        if grant.principal == "ingest" and ACLOperation.WRITE in grant.operations
    }
    assert written == {"cam.frames"}


def test_processor_reads_frames_and_writes_every_output_in_its_transactions() -> None:
    assert ACLOperation.WRITE not in operations("processor", ResourceType.TOPIC, "cam.frames")
    assert ACLOperation.READ in operations("processor", ResourceType.TOPIC, "cam.frames")
    for output in (TOPICS.results, TOPICS.dlq, TOPICS.to_label, TOPICS.events, TOPICS.tracks_state):
        assert ACLOperation.WRITE in operations("processor", ResourceType.TOPIC, output), output
    assert ACLOperation.READ in operations("processor", ResourceType.TOPIC, TOPICS.tracks_state)
    assert ACLOperation.READ in operations("processor", ResourceType.GROUP, "group-a")
    (txn,) = [g for g in pipeline_grants(TOPICS, "group-a") if g.resource == ResourceType.TRANSACTIONAL_ID]
    assert txn.name == "group-a." and txn.acls()[0].resource_pattern.pattern_type == ACLResourcePatternType.PREFIXED


def test_trainer_and_labeler() -> None:
    assert operations("trainer", ResourceType.TOPIC, "cam.labels") == {ACLOperation.READ, ACLOperation.DESCRIBE}
    grants = pipeline_grants(TOPICS, "g")
    assert not any(g.principal == "trainer" and ACLOperation.WRITE in g.operations for g in grants)
    assert ACLOperation.WRITE in operations("labeler", ResourceType.TOPIC, "cam.labels")
    assert ACLOperation.READ in operations("labeler", ResourceType.TOPIC, "cam.to_label")
