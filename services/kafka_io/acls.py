"""Least privilege: what each principal of the pipeline may do on which topic, group and
transactional id. ``vlm local up --secure`` applies it for the default topics; a deployment
with its own brokers applies the same table (:func:`pipeline_grants`).

- ``ingest`` writes frames with an idempotent producer (which asks the cluster for a
  producer id: IDEMPOTENT_WRITE on the cluster);
- ``processor`` reads frames in its group, writes results, dead letters, to-label samples,
  events and tracker state in transactions named ``<group>.*``, and reads the tracker state
  back when it takes over a partition;
- ``trainer`` reads labels (group-less, assigned partitions);
- ``labeler`` (the Label Studio sync) reads to-label samples and writes labels.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from kafka.admin import (
    ACL,
    ACLFilter,
    ACLOperation,
    ACLPermissionType,
    ACLResourcePatternType,
    ResourcePattern,
    ResourcePatternFilter,
    ResourceType,
)

from vlm_core.config import Topics
from vlm_core.errors import InfrastructureError


@dataclass(frozen=True)
class Grant:
    principal: str
    resource: ResourceType
    name: str
    operations: tuple[ACLOperation, ...]
    prefixed: bool = False

    def acls(self) -> list[ACL]:
        pattern = ResourcePattern(
            self.resource,
            self.name,
            ACLResourcePatternType.PREFIXED if self.prefixed else ACLResourcePatternType.LITERAL,
        )
        return [
            ACL(f"User:{self.principal}", "*", operation, ACLPermissionType.ALLOW, pattern)
            for operation in self.operations
        ]


_READ = (ACLOperation.READ, ACLOperation.DESCRIBE)
_WRITE = (ACLOperation.WRITE, ACLOperation.DESCRIBE)


def pipeline_grants(topics: Topics, group_id: str) -> list[Grant]:
    """The grants of every principal for one pipeline's topics and processor group."""
    topic = ResourceType.TOPIC
    outputs = (topics.results, topics.dlq, topics.to_label, topics.events, topics.tracks_state)
    return [
        Grant("ingest", topic, topics.frames, _WRITE),
        Grant("ingest", ResourceType.CLUSTER, "kafka-cluster", (ACLOperation.IDEMPOTENT_WRITE,)),
        Grant("processor", topic, topics.frames, _READ),
        *(Grant("processor", topic, name, _WRITE) for name in outputs),
        Grant("processor", topic, topics.tracks_state, _READ),
        Grant("processor", ResourceType.GROUP, group_id, _READ),
        Grant("processor", ResourceType.TRANSACTIONAL_ID, f"{group_id}.", _WRITE, prefixed=True),
        Grant("trainer", topic, topics.labels, _READ),
        Grant("labeler", topic, topics.to_label, _READ),
        Grant("labeler", topic, topics.labels, _WRITE),
    ]


def apply_grants(bootstrap: str, grants: Iterable[Grant], *, timeout_s: float = 30.0) -> int:
    """Create the grants' ACLs (creating one that exists is a no-op); returns how many."""
    from services.kafka_io import admin

    acls = [acl for grant in grants for acl in grant.acls()]
    client = admin(bootstrap)
    try:
        outcome = client.create_acls(acls)
        failed = outcome.get("failed", [])
        if failed:
            acl, error = failed[0]
            raise InfrastructureError(
                f"the broker refused {len(failed)} ACL(s), first {acl}: {error}",
                hint="run as a super user of the cluster (the local stack's admin.env)",
            )
        _wait_visible(client, acls, timeout_s)
    finally:
        client.close()
    return len(acls)


def _key(acl: ACL) -> tuple[str, int, int, str, int, int]:
    pattern = acl.resource_pattern
    return (
        acl.principal,
        int(acl.operation),
        int(pattern.resource_type),
        pattern.resource_name,
        int(pattern.pattern_type),
        int(acl.permission_type),
    )


def _wait_visible(client: Any, acls: list[ACL], timeout_s: float) -> None:
    """The controller commits ACLs before the brokers apply them: a client that starts right
    after would be refused. Wait until the broker answering lists them all."""
    everything = ACLFilter(
        principal=None,
        host="*",
        operation=ACLOperation.ANY,
        permission_type=ACLPermissionType.ANY,
        resource_pattern=ResourcePatternFilter(ResourceType.ANY, None, ACLResourcePatternType.ANY),
    )
    wanted = {_key(acl) for acl in acls}
    deadline = time.monotonic() + timeout_s
    while True:
        present, _error = client.describe_acls(everything)
        missing = wanted - {_key(acl) for acl in present}
        if not missing:
            return
        if time.monotonic() > deadline:
            raise InfrastructureError(f"{len(missing)} ACL(s) not applied by the broker after {timeout_s:.0f}s")
        time.sleep(0.2)
