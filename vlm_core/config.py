"""Settings shared by the CLI, the services and the tests (pydantic, overridable by env)."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, Field

from vlm_core.cpu import CpuPlacement
from vlm_core.errors import ConfigError

ENV_PREFIX = "VLM_"


def _state_home() -> Path:
    return Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state"))


def _cache_home() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))


def _data_home() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share"))


class Topics(BaseModel, frozen=True):
    frames: str = "vlm.frames"
    results: str = "vlm.results"
    dlq: str = "vlm.frames.dlq"
    labels: str = "vlm.labels"
    to_label: str = "vlm.to_label"
    events: str = "vlm.events"
    #: Compacted, keyed by camera, as many partitions as ``frames``: each camera's tracker state.
    tracks_state: str = "vlm.tracks.state"


class LocalSettings(BaseModel, frozen=True):
    """Where the local single-node stack lives and listens. All addresses are loopback.

    Every field can be set from the environment as ``VLM_<FIELD>`` (upper case), e.g.
    ``VLM_KAFKA_PORT=29192``, when the settings come from :meth:`from_env` (as every
    command's do); the constructor alone reads no environment.
    """

    host: str = "127.0.0.1"
    kafka_port: int = 29092
    kafka_controller_port: int = 29093
    kafka_version: str = "4.1.1"
    kafka_heap: str = "512m"
    #: More options for the broker's JVM, as one shell-quoted string (``VLM_KAFKA_JVM_OPTIONS``).
    kafka_jvm_options: str = ""
    #: 1, or 3 for a cluster in a box: three KRaft nodes (broker and controller each),
    #: replication factor 3, ``min.insync.replicas=2``. Node N>1 listens on the ports of
    #: node 1 plus 100*(N-1).
    kafka_brokers: int = Field(default=1, ge=1, le=5)
    #: SASL/SCRAM-SHA-512 over TLS with an ACL per principal (``vlm local up --secure``).
    #: A state dir's Kafka is formatted with it or without; that choice is kept there.
    kafka_secure: bool = False
    ray_port: int = 26379
    ray_metrics_port: int = 28080
    ray_num_cpus: int = 2
    #: 2 adds a second Ray node on this machine (``ray-2``, its ports those of the head plus
    #: 10..19), so model replicas and the processor can sit on different nodes.
    ray_nodes: int = Field(default=1, ge=1, le=2)
    ray_worker_num_cpus: int = 1
    ray_object_store_bytes: int = 1_000_000_000
    prometheus_port: int = 29090
    ingest_metrics_port: int = 29100
    #: ``vlm view``'s default port.
    view_port: int = 28000
    labelstudio_port: int = 28090
    labelstudio_version: str = "1.23.2"
    state_dir: Path = Field(default_factory=lambda: _state_home() / "vlm-stream")
    cache_dir: Path = Field(default_factory=lambda: _cache_home() / "vlm-stream")
    registry_dir: Path = Field(default_factory=lambda: _data_home() / "vlm-stream" / "models")
    #: Label snapshots materialised from the labels topic, one directory per content hash.
    datasets_dir: Path = Field(default_factory=lambda: _data_home() / "vlm-stream" / "datasets")
    start_timeout_s: float = 90.0
    #: CPUs reserved for the model replicas' forward passes, as a Linux CPU list ("1",
    #: "2-3"); empty reserves none. The stack's services then run on the other CPUs and
    #: the forward threads on these (:class:`vlm_core.cpu.CpuPlacement`). Kept in the state
    #: dir while the stack runs, for later commands.
    model_cpus: str = ""

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> LocalSettings:
        """From ``VLM_*`` variables; the broker count a stack was started with (``vlm local
        up --brokers N``, kept in its state dir) applies where ``VLM_KAFKA_BROKERS`` is unset."""
        env = os.environ if environ is None else environ
        values = {name: env[ENV_PREFIX + name.upper()] for name in cls.model_fields if ENV_PREFIX + name.upper() in env}
        settings = cls.model_validate(values)
        if "kafka_brokers" not in values and (recorded := settings.recorded_brokers()) is not None:
            settings = settings.model_copy(update={"kafka_brokers": recorded})
        if "kafka_secure" not in values and settings.kafka_security_dir.is_dir():
            settings = settings.model_copy(update={"kafka_secure": True})
        if "model_cpus" not in values and (cpus := settings.recorded_model_cpus()) is not None:
            settings = settings.model_copy(update={"model_cpus": cpus})
        return settings

    @property
    def model_cpus_file(self) -> Path:
        return self.state_dir / "model-cpus"

    def recorded_model_cpus(self) -> str | None:
        """The model CPUs the running stack was started with, if it was started with some."""
        try:
            return self.model_cpus_file.read_text().strip() or None
        except OSError:
            return None

    def placement(self) -> CpuPlacement | None:
        """The CPU placement ``model_cpus`` asks for on this machine, or None for none."""
        if not self.model_cpus.strip():
            return None
        try:
            return CpuPlacement.reserve(self.model_cpus)
        except ValueError as exc:
            raise ConfigError(f"{exc} (--model-cpus / VLM_MODEL_CPUS)") from None

    @property
    def kafka_security_dir(self) -> Path:
        """Certificates and SCRAM credentials of a secure stack, one ``<principal>.env`` each."""
        return self.state_dir / "kafka-security"

    @property
    def brokers_file(self) -> Path:
        return self.state_dir / "kafka-brokers"

    def recorded_brokers(self) -> int | None:
        """How many Kafka nodes this state dir's stack was formatted with, if it was."""
        try:
            return int(self.brokers_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def kafka_node_ports(self, node: int) -> tuple[int, int]:
        """(client port, controller port) of Kafka node ``node`` (1-based)."""
        return self.kafka_port + 100 * (node - 1), self.kafka_controller_port + 100 * (node - 1)

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(f"{self.host}:{self.kafka_node_ports(n)[0]}" for n in range(1, self.kafka_brokers + 1))

    @property
    def kafka_replication(self) -> int:
        """The replication factor of topics the project creates on this stack."""
        return min(3, self.kafka_brokers)

    @property
    def ray_address(self) -> str:
        return f"{self.host}:{self.ray_port}"

    @property
    def prometheus_url(self) -> str:
        return f"http://{self.host}:{self.prometheus_port}"


def ray_environment() -> dict[str, str]:
    """Environment every Ray process and client needs to stay local and quiet."""
    return {
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "disabled",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    }
