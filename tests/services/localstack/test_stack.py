import base64
import os
import sys
import time
import uuid
from pathlib import Path
from unittest import mock

import pytest

from services.localstack import stack as local
from vlm_core.cpu import machine_cpus


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


def test_a_three_broker_stack_has_three_nodes_on_their_own_ports(tmp_path: Path) -> None:
    from services.localstack import LocalStack
    from vlm_core.config import LocalSettings

    settings = LocalSettings(state_dir=tmp_path, kafka_port=40092, kafka_controller_port=40093, kafka_brokers=3)
    stack = LocalStack(settings)
    assert [b.name for b in stack.brokers] == ["kafka", "kafka-2", "kafka-3"]
    assert [s.name for s in stack.select(["kafka"])] == ["kafka", "kafka-2", "kafka-3"]
    assert [s.name for s in stack.select(["kafka-2", "ray"])] == ["kafka-2", "ray"]
    assert settings.bootstrap_servers == "127.0.0.1:40092,127.0.0.1:40192,127.0.0.1:40292"
    assert settings.kafka_node_ports(3) == (40292, 40293) and settings.kafka_replication == 3
    assert stack.brokers[1]._quorum() == (
        "controller.quorum.voters=1@127.0.0.1:40093,2@127.0.0.1:40193,3@127.0.0.1:40293"
    )
    assert (
        LocalStack(settings.model_copy(update={"kafka_brokers": 1}))
        .brokers[0]
        ._quorum()
        .startswith("controller.quorum.bootstrap.servers=")
    )


def test_a_state_dir_keeps_its_broker_count_and_refuses_another(tmp_path: Path) -> None:
    from services.localstack import LocalStack
    from vlm_core.config import LocalSettings
    from vlm_core.errors import InfrastructureError

    three = LocalSettings(state_dir=tmp_path, kafka_brokers=3)
    LocalStack(three)._record_brokers()
    assert LocalSettings.from_env({"VLM_STATE_DIR": str(tmp_path)}).kafka_brokers == 3  # later commands
    assert LocalSettings.from_env({"VLM_STATE_DIR": str(tmp_path), "VLM_KAFKA_BROKERS": "1"}).kafka_brokers == 1
    (tmp_path / "kafka" / "data").mkdir(parents=True)
    (tmp_path / "kafka" / "data" / "meta.properties").write_text("formatted")
    with pytest.raises(InfrastructureError, match="holds a 3-broker Kafka; it cannot start as 1"):
        LocalStack(three.model_copy(update={"kafka_brokers": 1}))._record_brokers()


def test_a_failed_start_names_the_cause_above_the_shutdown_that_follows(tmp_path: Path) -> None:
    log = tmp_path / "kafka.log"
    shutdown = [f"INFO [ThrottledChannelReaper-{i}]: Shutdown completed" for i in range(30)]
    cause = "ERROR [KafkaRaftServer nodeId=1] Fatal error during broker startup. Address already in use"
    log.write_text("\n".join(["INFO starting", cause, *shutdown]) + "\n")
    excerpt = local._log_excerpt(log).splitlines()
    assert excerpt[0] == cause
    assert excerpt[-1] == shutdown[-1] and len(excerpt) == 1 + 1 + 12
    log.write_text("INFO a\nINFO b\n")
    assert local._log_excerpt(log) == "INFO a\nINFO b"
    assert local._log_excerpt(tmp_path / "missing.log") == "(no log)"


def test_ray_starts_once_more_when_its_raylet_timed_out_and_not_for_other_failures(tmp_path: Path) -> None:
    from vlm_core.config import LocalSettings
    from vlm_core.errors import InfrastructureError

    ray = local.RayService(LocalSettings(state_dir=tmp_path))
    started = local.ServiceStatus("ray", "running", 1, ray.address, None)
    timed_out = InfrastructureError(f"ray exited with code 1 while starting; ... {local.RAYLET_START_TIMED_OUT}")
    with mock.patch.object(local.LocalService, "start", side_effect=[timed_out, started]) as start:
        assert ray.start() is started
    assert start.call_count == 2
    refused = [InfrastructureError("port in use"), started]
    with (
        mock.patch.object(local.LocalService, "start", side_effect=refused),
        pytest.raises(InfrastructureError, match="port in use"),
    ):
        ray.start()
    with (  # once more, not forever
        mock.patch.object(local.LocalService, "start", side_effect=[timed_out, timed_out]),
        pytest.raises(InfrastructureError, match=local.RAYLET_START_TIMED_OUT),
    ):
        ray.start()


class _Sleeper(local.LocalService):
    """A service that only sleeps: where it runs is what the test reads."""

    name = "sleeper"
    niceness = 3

    @property
    def address(self) -> str:
        return "-"

    def command(self) -> list[str]:
        child = "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])"
        code = f"import sys, time, subprocess; {child}; time.sleep(60)"
        return [sys.executable, "-c", code]

    def healthy(self) -> bool:
        return self.pid() is not None


needs_two_cpus = pytest.mark.skipif(len(machine_cpus()) < 2, reason="placement needs two CPUs to choose from")


@needs_two_cpus
def test_a_service_of_a_stack_with_model_cpus_runs_off_them_and_so_do_its_children(tmp_path: Path) -> None:
    from vlm_core.config import LocalSettings

    everywhere = machine_cpus()
    model = max(everywhere)
    service = _Sleeper(LocalSettings(state_dir=tmp_path, model_cpus=str(model)))
    service.start()
    try:
        pid = service.pid()
        assert pid is not None
        deadline = time.monotonic() + 10
        while len(local.process_tree(pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        tree = local.process_tree(pid)
        assert len(tree) == 2
        assert all(os.sched_getaffinity(p) == everywhere - {model} for p in tree)
        assert os.getpriority(os.PRIO_PROCESS, pid) == 3  # its niceness as before
    finally:
        service.stop()
    plain = _Sleeper(LocalSettings(state_dir=tmp_path / "plain"))
    plain.start()
    try:
        assert os.sched_getaffinity(plain.pid() or 0) == os.sched_getaffinity(0)  # where this test runs
    finally:
        plain.stop()


@needs_two_cpus
def test_a_running_stack_keeps_its_model_cpus_until_it_is_down(tmp_path: Path) -> None:
    from services.localstack import LocalStack
    from vlm_core.config import LocalSettings
    from vlm_core.errors import InfrastructureError

    model = str(max(machine_cpus()))
    pinned = LocalSettings(state_dir=tmp_path, model_cpus=model)
    LocalStack(pinned)._record_placement()
    assert pinned.recorded_model_cpus() == model
    assert LocalSettings.from_env({"VLM_STATE_DIR": str(tmp_path)}).model_cpus == model  # later commands
    ray = LocalStack(pinned).services["ray"]
    ray.dir.mkdir(parents=True)
    ray.pid_file.write_text(f"{os.getpid()}\n")  # "running": a live pid
    with pytest.raises(InfrastructureError, match=rf"the running stack \(ray\) keeps CPUs {model} for the model"):
        LocalStack(pinned.model_copy(update={"model_cpus": ""}))._record_placement()
    LocalStack(pinned)._record_placement()  # the same again is fine
    ray.pid_file.unlink()
    LocalStack(pinned).down()
    assert pinned.recorded_model_cpus() is None
    # Not running: any placement may start, and none leaves nothing recorded.
    LocalStack(pinned.model_copy(update={"model_cpus": ""}))._record_placement()
    assert not pinned.model_cpus_file.exists()


def test_the_brokers_jvm_takes_the_settings_options_after_its_heap(tmp_path: Path) -> None:
    from vlm_core.config import LocalSettings

    plain = local.KafkaService(LocalSettings(state_dir=tmp_path)).command()
    assert plain[:2] == ["java", "-Xmx512m"] and plain[-2] == "kafka.Kafka"
    assert not any(arg.startswith("-XX:") for arg in plain)
    tuned = local.KafkaService(
        LocalSettings(state_dir=tmp_path, kafka_jvm_options="-XX:TieredStopAtLevel=1 '-Dname=a b'")
    ).command()
    assert tuned == [*plain[:2], "-XX:TieredStopAtLevel=1", "-Dname=a b", *plain[2:]]
