import base64
import uuid
from unittest import mock

from services.localstack import stack as local


def test_kafka_cluster_ids_never_start_with_a_dash() -> None:
    # A UUID whose base64 starts with '-' (0xf8 in the first byte) must be skipped.
    dashed = uuid.UUID(bytes=b"\xf8" + bytes(15))
    plain = uuid.UUID(bytes=bytes(16))
    assert base64.urlsafe_b64encode(dashed.bytes).decode().startswith("-")
    with mock.patch.object(local.uuid, "uuid4", side_effect=[dashed, plain]):
        cluster_id = local._kafka_cluster_id()
    assert cluster_id == base64.urlsafe_b64encode(plain.bytes).decode().rstrip("=")
    assert all(not local._kafka_cluster_id().startswith("-") for _ in range(500))
    assert len(cluster_id) == 22
