"""The pipeline over SASL_SSL (SCRAM-SHA-512, keytool certificates, an ACL per principal):
a broker of its own started by `vlm local up kafka --secure`, each client acting as its own
principal, and the refusals a user meets (a wrong password, a topic that is not theirs)
as one clear line."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator

import pytest

from services.chaos import CHAOS_MODEL
from services.kafka_io import SECURITY_ENV
from services.localstack.security import KafkaSecurity
from vlm_core.config import LocalSettings, Topics
from vlm_core.contracts.task import Task
from vlm_core.pipeline import model_pipeline_args

pytestmark = pytest.mark.integration

FRAMES = 60


def vlm(args: list[str], env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class SecureStack:
    def __init__(self, settings: LocalSettings, base_env: dict[str, str]) -> None:
        self.settings = settings
        self.base_env = base_env
        self.security = KafkaSecurity(settings.kafka_security_dir)

    @property
    def bootstrap(self) -> str:
        return self.settings.bootstrap_servers

    def env(self, principal: str | None, **changes: str) -> dict[str, str]:
        """A process environment acting as ``principal`` (None: no credentials at all)."""
        env = {k: v for k, v in self.base_env.items() if k not in SECURITY_ENV}
        if principal is not None:
            env.update(self.security.client_env(principal))
        env.update(changes)
        return env


@pytest.fixture(scope="module")
def secure(settings: LocalSettings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureStack]:
    state = tmp_path_factory.mktemp("secure") / "state"
    base_env = {
        **os.environ,
        "VLM_STATE_DIR": str(state),
        "VLM_KAFKA_PORT": str(settings.kafka_port + 2000),
        "VLM_KAFKA_CONTROLLER_PORT": str(settings.kafka_controller_port + 2000),
        "COLUMNS": "200",
    }
    up = vlm(["local", "up", "kafka", "--secure"], {k: v for k, v in base_env.items() if k not in SECURITY_ENV})
    stack = SecureStack(LocalSettings.from_env(base_env), base_env)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "SASL_SSL" in up.stdout
        yield stack
    finally:
        down = vlm(["local", "down", "kafka"], stack.env(None))
        assert down.returncode == 0, down.stderr


def test_secure_stack_is_recorded_and_refuses_plaintext(secure: SecureStack) -> None:
    assert secure.settings.kafka_secure and secure.security.exists()
    config = (secure.settings.state_dir / "kafka" / "server.properties").read_text()
    assert "sasl.enabled.mechanisms=SCRAM-SHA-512" in config and "allow.everyone.if.no.acl.found=false" in config
    env = secure.env(None, VLM_KAFKA_SECURITY_PROTOCOL="PLAINTEXT")
    reader = vlm(["results", "--bootstrap", secure.bootstrap, "--limit", "1"], env, timeout=120)
    assert reader.returncode == 2 and "Traceback" not in reader.stderr
    assert "error:" in reader.stderr


def test_wrong_password_is_one_clear_line(secure: SecureStack) -> None:
    env = secure.env("trainer", VLM_KAFKA_SASL_PASSWORD="not-the-password")
    reader = vlm(["results", "--bootstrap", secure.bootstrap, "--limit", "1"], env, timeout=120)
    assert reader.returncode == 2
    lines = reader.stderr.strip().splitlines()
    assert len(lines) == 1, reader.stderr
    assert "refused user 'trainer' (SCRAM-SHA-512)" in lines[0] and "VLM_KAFKA_SASL_PASSWORD" in lines[0]


def test_a_principal_cannot_write_a_topic_that_is_not_its_own(secure: SecureStack) -> None:
    topics = Topics()
    env = secure.env("ingest")
    source = "synthetic://?seed=3&width=96&height=64"
    ingest = vlm(
        ["ingest", "--source", source, "--camera-id", "intruder", "--max-frames", "5", "--fps", "0",
         "--topic", topics.results, "--bootstrap", secure.bootstrap, "--metrics-port", str(free_port())],
        env,
    )  # fmt: skip
    assert ingest.returncode == 2, ingest.stdout + ingest.stderr
    assert "Traceback" not in ingest.stderr
    error = [line for line in ingest.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "refused the frames on vlm.results" in error[0], ingest.stderr
    assert "TopicAuthorizationFailed" in error[0]
    # Nothing reached the topic the principal may not write.
    os.environ.update(secure.security.client_env("admin"))
    try:
        from services import kafka_io

        assert kafka_io.read_records(secure.bootstrap, topics.results, 1, timeout_s=3) == []
    finally:
        for name in SECURITY_ENV:
            os.environ.pop(name, None)


def test_pipeline_end_to_end_over_sasl_ssl(
    secure: SecureStack, ray_address: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services import kafka_io
    from services.inference import deploy

    topics = Topics()
    app = f"secure-{uuid.uuid4().hex[:6]}"
    args = model_pipeline_args(
        secure.bootstrap,
        topics,
        Task.CLASSIFICATION,
        CHAOS_MODEL,
        processor={"batch_size": 8, "poll_timeout_ms": 50, "num_cpus": 0.25},
    )
    deploy.connect(ray_address)
    # The processor's replica runs as the `processor` principal: the credentials of the
    # process that builds the application travel in its runtime_env.
    for name, value in secure.security.client_env("processor").items():
        monkeypatch.setenv(name, value)
    deploy.deploy(args, app_name=app, wait_s=240)
    try:
        camera = f"secure-cam-{uuid.uuid4().hex[:4]}"
        ingest = vlm(
            ["ingest", "--source", "synthetic://?seed=5&width=96&height=64", "--camera-id", camera,
             "--max-frames", str(FRAMES), "--fps", "30", "--bootstrap", secure.bootstrap,
             "--metrics-port", str(free_port())],
            secure.env("ingest"),
        )  # fmt: skip
        assert ingest.returncode == 0, ingest.stdout + ingest.stderr
        assert f"sent {FRAMES}" in ingest.stdout
        for name, value in secure.security.client_env("admin").items():
            monkeypatch.setenv(name, value)
        records = kafka_io.read_records(secure.bootstrap, topics.results, FRAMES, timeout_s=180, linger_ms=2000)
        seen = Counter((doc["camera_id"], int(doc["seq"])) for doc in (json.loads(r.value) for r in records))
        assert set(seen) == {(camera, seq) for seq in range(FRAMES)}
        assert max(seen.values()) == 1, "a result was seen twice"
    finally:
        deploy.delete(app)
