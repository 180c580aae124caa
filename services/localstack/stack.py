"""The local single-node stack: Apache Kafka (KRaft), a Ray head, Prometheus.

Each service runs as a child process in its own session with a PID file and a log file
in the state dir; it is stopped by that PID, never by name. Everything listens on
loopback only. ``up`` and ``down`` are idempotent.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import socket
import string
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from services.localstack.security import ADMIN, KafkaSecurity
from services.resources import resource
from vlm_core.config import LocalSettings, Topics, ray_environment
from vlm_core.cpu import MODEL_CPUS_ENV
from vlm_core.errors import InfrastructureError


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    state: str  # running | stopped | not installed | unhealthy
    pid: int | None
    address: str
    log: Path | None
    detail: str = ""

    @property
    def running(self) -> bool:
        return self.state == "running"


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """Whether ``url`` answers 200: a service's health check."""
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def _stat_fields(pid: int | str) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state, ppid, pgrp, ...)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    fields = _stat_fields(pid)
    return fields is None or fields[0] != "Z"


def process_group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is ``pgid``."""
    members = []
    for entry in Path("/proc").iterdir():
        fields = _stat_fields(entry.name) if entry.name.isdigit() else None
        if fields is not None and fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def process_tree(root: int) -> list[int]:
    """``root`` and its live descendants, whatever session they made for themselves."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        fields = _stat_fields(entry.name) if entry.name.isdigit() else None
        if fields is not None and fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def _child_setup(niceness: int, cpus: frozenset[int] | None) -> Callable[[], None] | None:
    """What a service's process does before it runs: its niceness, and the CPUs it and
    every process it starts run on where the stack reserves some for the model."""
    if not niceness and cpus is None:
        return None

    def setup() -> None:
        if niceness:
            os.setpriority(os.PRIO_PROCESS, 0, niceness)
        if cpus is not None:
            os.sched_setaffinity(0, cpus)

    return setup


class LocalService:
    name: str = ""

    def __init__(self, settings: LocalSettings) -> None:
        self.settings = settings
        self.dir = settings.state_dir / self.name
        self.pid_file = self.dir / f"{self.name}.pid"
        self.log_file = self.dir / f"{self.name}.log"

    # -- to override ------------------------------------------------------------------
    @property
    def address(self) -> str:
        raise NotImplementedError

    def installed(self) -> str | None:
        """None when the service can run here, else what is missing and how to fix it."""
        return None

    def command(self) -> list[str]:
        raise NotImplementedError

    def prepare(self) -> None:
        """One-time set-up before the first start (download, format, render config)."""

    def healthy(self) -> bool:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return {}

    stop_timeout_s: float = 20.0
    #: Not started by a plain ``up``, only when named.
    optional: bool = False
    #: A first start that migrates a database takes longer than the settings' timeout.
    min_start_timeout_s: float = 0.0
    #: Plumbing on a shared single node runs niced so model replicas keep their cores.
    niceness: int = 0

    # -- shared mechanics ---------------------------------------------------------------
    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    def status(self) -> ServiceStatus:
        missing = self.installed()
        if missing:
            return ServiceStatus(self.name, "not installed", None, self.address, None, missing)
        pid = self.pid()
        if pid is None:
            return ServiceStatus(self.name, "stopped", None, self.address, self.log_file)
        state = "running" if self.healthy() else "unhealthy"
        return ServiceStatus(self.name, state, pid, self.address, self.log_file)

    def start(self, *, wait: bool = True) -> ServiceStatus:
        """Start it (idempotent). ``wait=False`` returns once the process runs: the nodes of
        a Kafka cluster only become healthy together, once a quorum of them is up."""
        missing = self.installed()
        if missing:
            raise InfrastructureError(f"{self.name} cannot start: {missing}")
        if self.pid() is not None:
            if wait:
                self._wait_healthy()
            return self.status()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.prepare()
        env = {**os.environ, **self.environment()}
        placement = self.settings.placement()
        with open(self.log_file, "ab") as log:
            proc = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=self.dir,
                start_new_session=True,
                preexec_fn=_child_setup(self.niceness, placement.rest if placement else None),
            )
        self.pid_file.write_text(f"{proc.pid}\n")
        self._starting = proc
        if wait:
            self.wait_healthy()
        return self.status()

    def wait_healthy(self) -> None:
        self._wait_healthy(getattr(self, "_starting", None))

    def stop(self) -> bool:
        """Stop by PID: SIGTERM, then SIGKILL to its process group. True if it was running."""
        pid = self.terminate()
        if pid is None:
            return False
        self.reap(pid)
        return True

    def terminate(self) -> int | None:
        """Send SIGTERM by PID without waiting; the PID, or None if it was not running."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return None
        os.kill(pid, signal.SIGTERM)
        return pid

    def reap(self, pid: int) -> None:
        """Wait for a terminated ``pid`` to exit, then SIGKILL what is left of its process group."""
        deadline = time.monotonic() + self.stop_timeout_s
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        # Whatever the service left behind in the session we created (pgid == pid).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while process_group_members(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        self.pid_file.unlink(missing_ok=True)

    def _wait_healthy(self, proc: subprocess.Popen[bytes] | None = None) -> None:
        timeout_s = max(self.settings.start_timeout_s, self.min_start_timeout_s)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.healthy():
                return
            if proc is not None and proc.poll() is not None:
                raise InfrastructureError(
                    f"{self.name} exited with code {proc.returncode} while starting; from its log:\n"
                    + _log_excerpt(self.log_file)
                )
            time.sleep(0.5)
        raise InfrastructureError(f"{self.name} did not become healthy within {timeout_s:.0f}s; see {self.log_file}")


class KafkaService(LocalService):
    """One Kafka node (broker and controller in KRaft). Node 1 is ``kafka``; a cluster in a
    box (``kafka_brokers: 3``) adds ``kafka-2`` and ``kafka-3``, all formatted with one
    cluster id and a static controller quorum."""

    name = "kafka"
    niceness = 10

    def __init__(self, settings: LocalSettings, node: int = 1) -> None:
        self.node = node
        self.name = "kafka" if node == 1 else f"kafka-{node}"
        super().__init__(settings)

    @property
    def address(self) -> str:
        return f"{self.settings.host}:{self.settings.kafka_node_ports(self.node)[0]}"

    @property
    def libs_dir(self) -> Path:
        return self.settings.cache_dir / f"kafka-{self.settings.kafka_version}" / "libs"

    def installed(self) -> str | None:
        for tool, package in (("java", "default-jre-headless"), ("mvn", "maven")):
            if shutil.which(tool) is None:
                return f"'{tool}' is not on PATH; install it (Debian: apt-get install {package})"
        return None

    def environment(self) -> dict[str, str]:
        return {"KAFKA_HEAP_OPTS": f"-Xmx{self.settings.kafka_heap}"}

    def ensure_jars(self) -> Path:
        marker = self.libs_dir / ".complete"
        if marker.is_file():
            return self.libs_dir
        self.libs_dir.mkdir(parents=True, exist_ok=True)
        # Maven may write beside its pom: run a copy in the cache, never in site-packages.
        pom = self.libs_dir.parent / "pom.xml"
        shutil.copyfile(resource("kafka/pom.xml"), pom)
        cmd = [
            "mvn",
            "-q",
            "-B",
            "-f",
            str(pom),
            f"-Dkafka.version={self.settings.kafka_version}",
            "dependency:copy-dependencies",
            f"-DoutputDirectory={self.libs_dir}",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise InfrastructureError(
                f"Maven could not fetch Kafka {self.settings.kafka_version} jars:\n"
                + proc.stdout[-2000:]
                + proc.stderr[-2000:]
            )
        marker.touch()
        return self.libs_dir

    def _quorum(self) -> str:
        settings = self.settings
        if settings.kafka_brokers == 1:
            return f"controller.quorum.bootstrap.servers={settings.host}:{settings.kafka_controller_port}"
        voters = ",".join(
            f"{n}@{settings.host}:{settings.kafka_node_ports(n)[1]}" for n in range(1, settings.kafka_brokers + 1)
        )
        return f"controller.quorum.voters={voters}"

    def _cluster_id(self) -> str:
        """One id for every node of the stack, made once."""
        path = self.settings.state_dir / "kafka-cluster-id"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(_kafka_cluster_id())
        return path.read_text().strip()

    @property
    def security(self) -> KafkaSecurity | None:
        return KafkaSecurity(self.settings.kafka_security_dir) if self.settings.kafka_secure else None

    def client_options(self) -> dict[str, str]:
        """kafka-python settings of the operator's (``admin``) client of this node."""
        from services.kafka_io import security_options

        return security_options(self.security.client_env(ADMIN)) if self.security else {}

    def _listeners(self, port: int, controller_port: int) -> str:
        if self.security:
            return self.security.broker_properties(port, controller_port)
        return "\n".join(
            [
                f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
                f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
                "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
                "inter.broker.listener.name=PLAINTEXT",
            ]
        )

    def prepare(self) -> None:
        self.ensure_jars()
        data_dir = self.dir / "data"
        port, controller_port = self.settings.kafka_node_ports(self.node)
        if self.security:
            self.security.ensure()
        replication = self.settings.kafka_replication
        template = resource("kafka/server.properties.template").read_text()
        props = string.Template(template).substitute(
            node_id=self.node,
            quorum=self._quorum(),
            listeners=self._listeners(port, controller_port),
            data_dir=data_dir,
            replication=replication,
            min_isr=2 if replication >= 3 else 1,
        )
        (self.dir / "server.properties").write_text(props)
        if not (data_dir / "meta.properties").is_file():
            standalone = ["--standalone"] if self.settings.kafka_brokers == 1 else []
            proc = subprocess.run(
                [
                    *self._java(),
                    "kafka.tools.StorageTool",
                    "format",
                    *standalone,
                    "-t",
                    self._cluster_id(),
                    "-c",
                    str(self.dir / "server.properties"),
                    *(self.security.format_args() if self.security else []),
                ],
                capture_output=True,
                text=True,
                env={**os.environ, **self.environment()},
            )
            if proc.returncode != 0:
                raise InfrastructureError(f"formatting Kafka storage failed:\n{proc.stdout}{proc.stderr}")

    def _java(self) -> list[str]:
        log4j = resource("kafka/log4j2.yaml")
        return [
            "java",
            f"-Xmx{self.settings.kafka_heap}",
            *shlex.split(self.settings.kafka_jvm_options),
            f"-Dlog4j2.configurationFile={log4j}",
            "-cp",
            f"{self.libs_dir}/*",
        ]

    def command(self) -> list[str]:
        return [*self._java(), "kafka.Kafka", str(self.dir / "server.properties")]

    def healthy(self) -> bool:
        if not port_open(self.settings.host, self.settings.kafka_node_ports(self.node)[0]):
            return False
        try:
            from kafka import KafkaAdminClient

            admin = KafkaAdminClient(bootstrap_servers=self.address, request_timeout_ms=3000, **self.client_options())
            try:
                admin.list_topics()
            finally:
                admin.close()
        except Exception:
            return False
        return True


#: What ``ray start`` says when its raylet did not register with the GCS in the 30 s Ray
#: allows it (fixed in ``ray._private.node``).
RAYLET_START_TIMED_OUT = "timed out during startup"


class RayService(LocalService):
    name = "ray"
    stop_timeout_s = 40.0

    def start(self, *, wait: bool = True) -> ServiceStatus:
        """Start, and once more when Ray gave up on its own raylet: on a loaded 2-core
        machine (a test run, right after the closed-loop test) the raylet once took over
        Ray's fixed 30 s to register, and ``ray start`` exited."""
        try:
            return super().start(wait=wait)
        except InfrastructureError as exc:
            if RAYLET_START_TIMED_OUT not in str(exc):
                raise
        with contextlib.suppress(OSError, ValueError):  # what the failed start left
            self.reap(int(self.pid_file.read_text().strip()))
        return super().start(wait=wait)

    @property
    def address(self) -> str:
        return f"{self.settings.ray_address} (metrics :{self.settings.ray_metrics_port})"

    def environment(self) -> dict[str, str]:
        # Ray nices its workers to 15 by default; the model replicas are the workload here
        # and must not yield their core to the broker and Ray's own daemons. Its workers
        # inherit the model CPUs: a replica's forward thread moves onto them.
        return {**ray_environment(), "RAY_worker_niceness": "0", MODEL_CPUS_ENV: self.settings.model_cpus.strip()}

    def command(self) -> list[str]:
        ray_bin = Path(sys.executable).with_name("ray")
        s = self.settings
        return [
            str(ray_bin) if ray_bin.exists() else "ray",
            "start",
            "--head",
            "--block",
            "--node-ip-address",
            s.host,
            "--port",
            str(s.ray_port),
            "--num-cpus",
            str(s.ray_num_cpus),
            "--object-store-memory",
            str(s.ray_object_store_bytes),
            "--metrics-export-port",
            str(s.ray_metrics_port),
            "--include-dashboard=false",
            "--disable-usage-stats",
        ]

    def healthy(self) -> bool:
        return port_open(self.settings.host, self.settings.ray_port) and port_open(
            self.settings.host, self.settings.ray_metrics_port
        )


class RayWorkerService(RayService):
    """A second Ray node on this machine joining the head (see ``ray_node``): its own raylet,
    object store and worker processes, so losing it loses what ran there."""

    name = "ray-2"

    @property
    def node_manager_port(self) -> int:
        return self.settings.ray_port + 10

    @property
    def address(self) -> str:
        return f"{self.settings.host}:{self.node_manager_port} (joins {self.settings.ray_address})"

    def command(self) -> list[str]:
        s = self.settings
        return [
            sys.executable,
            "-m",
            "services.localstack.ray_node",
            s.ray_address,
            str(self.node_manager_port),
            str(s.ray_worker_num_cpus),
            str(min(s.ray_object_store_bytes, 300_000_000)),
            str(self.ready_file),
        ]

    @property
    def ready_file(self) -> Path:
        return self.dir / "joined"

    def healthy(self) -> bool:
        """Joined: the node process wrote its PID once Ray accepted the node."""
        try:
            return int(self.ready_file.read_text()) == self.pid()
        except (OSError, ValueError):
            return False


class PrometheusService(LocalService):
    name = "prometheus"

    @property
    def address(self) -> str:
        return self.settings.prometheus_url

    def installed(self) -> str | None:
        if shutil.which("prometheus") is None:
            return "the 'prometheus' binary is not on PATH (Debian: apt-get install prometheus)"
        return None

    def prepare(self) -> None:
        render_prometheus_config(self.settings, self.dir / "prometheus.yml")

    def command(self) -> list[str]:
        return [
            "prometheus",
            f"--config.file={self.dir / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.dir / 'data'}",
            f"--web.listen-address={self.settings.host}:{self.settings.prometheus_port}",
            "--storage.tsdb.retention.time=2d",
        ]

    def healthy(self) -> bool:
        return http_ok(f"{self.settings.prometheus_url}/-/ready")


def render_prometheus_config(settings: LocalSettings, path: Path) -> None:
    """The repo's prometheus.yml with scrape targets pointed at this stack's ports."""
    config = yaml.safe_load(resource("prometheus/prometheus.yml").read_text())
    targets = {
        "ray": f"{settings.host}:{settings.ray_metrics_port}",
        "vlm-ingest": f"{settings.host}:{settings.ingest_metrics_port}",
    }
    for job in config.get("scrape_configs", []):
        if job["job_name"] in targets:
            job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
    rules = config.get("rule_files", [])
    config["rule_files"] = [str(resource(f"prometheus/{r}").resolve()) for r in rules]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))


class LabelStudioService(LocalService):
    """Label Studio from PyPI, in a venv of its own in the cache (it pins many packages),
    with SQLite storage in the state dir and one admin user whose API token the sync uses."""

    name = "labelstudio"
    #: Started only when named: ``vlm local up labelstudio``.
    optional = True
    niceness = 5
    stop_timeout_s = 30.0
    min_start_timeout_s = 600.0

    @property
    def address(self) -> str:
        return self.url

    @property
    def url(self) -> str:
        return f"http://{self.settings.host}:{self.settings.labelstudio_port}"

    @property
    def venv(self) -> Path:
        return self.settings.cache_dir / f"labelstudio-{self.settings.labelstudio_version}"

    @property
    def credentials_file(self) -> Path:
        return self.dir / "credentials.json"

    def ensure_venv(self) -> Path:
        marker = self.venv / ".complete"
        if marker.is_file():
            return self.venv
        shutil.rmtree(self.venv, ignore_errors=True)
        steps = [
            [sys.executable, "-m", "venv", str(self.venv)],
            [
                str(self.venv / "bin" / "pip"),
                "install",
                "-q",
                "--cache-dir",
                str(self.settings.cache_dir / "pip"),
                f"label-studio=={self.settings.labelstudio_version}",
            ],
        ]
        for step in steps:
            proc = subprocess.run(step, capture_output=True, text=True)
            if proc.returncode != 0:
                raise InfrastructureError(
                    f"installing Label Studio {self.settings.labelstudio_version} into {self.venv} failed:\n"
                    + (proc.stdout + proc.stderr)[-3000:]
                )
        marker.touch()
        return self.venv

    def credentials(self) -> dict[str, str]:
        """The admin user and API token, made once per state dir (file mode 0600)."""
        import json
        import secrets

        if self.credentials_file.is_file():
            return dict(json.loads(self.credentials_file.read_text()))
        self.dir.mkdir(parents=True, exist_ok=True)
        creds = {
            "url": self.url,
            "username": "admin@vlm-stream.local",
            "password": secrets.token_urlsafe(18),
            "token": secrets.token_hex(20),
        }
        fd = os.open(self.credentials_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(creds, fh)
        return creds

    def prepare(self) -> None:
        self.ensure_venv()
        self.credentials()

    def environment(self) -> dict[str, str]:
        data = str(self.dir / "data")
        return {
            "LABEL_STUDIO_BASE_DATA_DIR": data,
            "DJANGO_DB": "sqlite",
            # No calls home: no version check, analytics or error reporting.
            "LATEST_VERSION_CHECK": "false",
            "COLLECT_ANALYTICS": "false",
            "SENTRY_DSN": "",
            "FRONTEND_SENTRY_DSN": "",
            # Images of tasks are sent inline (data: URIs); nothing is read from local files.
            "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "false",
            "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
        }

    def command(self) -> list[str]:
        creds = self.credentials()
        return [
            str(self.venv / "bin" / "label-studio"),
            "start",
            "--no-browser",
            "--data-dir",
            str(self.dir / "data"),
            "--internal-host",
            self.settings.host,
            "--port",
            str(self.settings.labelstudio_port),
            "--username",
            creds["username"],
            "--password",
            creds["password"],
            "--user-token",
            creds["token"],
            "--enable-legacy-api-token",
            "--log-level",
            "WARNING",
        ]

    def healthy(self) -> bool:
        return http_ok(f"{self.url}/health")


SERVICE_TYPES: tuple[type[LocalService], ...] = (KafkaService, RayService, PrometheusService, LabelStudioService)


class LocalStack:
    def __init__(self, settings: LocalSettings | None = None) -> None:
        self.settings = settings or LocalSettings.from_env()
        self.services: dict[str, LocalService] = {}
        for cls in SERVICE_TYPES:
            if cls is KafkaService:
                for node in range(1, self.settings.kafka_brokers + 1):
                    broker = KafkaService(self.settings, node)
                    self.services[broker.name] = broker
            else:
                self.services[cls.name] = cls(self.settings)
            if cls is RayService:
                # A second node that runs is stopped and shown even by a command not told of it.
                node = RayWorkerService(self.settings)
                if self.settings.ray_nodes > 1 or node.pid_file.is_file():
                    self.services[node.name] = node

    @property
    def brokers(self) -> list[KafkaService]:
        return [s for s in self.services.values() if isinstance(s, KafkaService)]

    def select(self, names: list[str] | None, *, optional: bool = False) -> list[LocalService]:
        """The named services ("kafka" names every node of the cluster); none named: every
        service, the optional ones only if ``optional``."""
        if not names:
            return [s for s in self.services.values() if optional or not s.optional]
        unknown = [n for n in names if n not in self.services]
        if unknown:
            raise InfrastructureError(f"unknown service(s) {unknown}", hint=f"choose from {', '.join(self.services)}")
        chosen: list[LocalService] = []
        for name in names:
            for service in self._named(name):
                if service not in chosen:
                    chosen.append(service)
        return chosen

    def _named(self, name: str) -> list[LocalService]:
        """ "kafka" is every node of the cluster, "ray" the head and its second node."""
        if name == "kafka":
            return list(self.brokers)
        if name == "ray":
            return [s for n, s in self.services.items() if n in ("ray", RayWorkerService.name)]
        return [self.services[name]]

    def up(
        self, names: list[str] | None = None, *, required: tuple[str, ...] = ("kafka", "ray")
    ) -> list[ServiceStatus]:
        services = []
        for service in self.select(names):
            missing = service.installed()
            if missing and service.name not in required and not names:
                continue
            services.append(service)
        self._record_placement()
        # Every Kafka node first: none is healthy before a quorum of controllers runs.
        brokers = [s for s in services if isinstance(s, KafkaService)]
        if brokers:
            self._record_brokers()
        for broker in brokers:
            broker.start(wait=False)
        for broker in brokers:
            broker.wait_healthy()
        for service in services:
            if not isinstance(service, KafkaService):
                service.start()
        return [s.status() for s in self.select(names)]

    def _record_brokers(self) -> None:
        """A state dir holds one shape of cluster: its Kafka storage is formatted for it."""
        recorded = self.settings.recorded_brokers()
        wanted = self.settings.kafka_brokers
        formatted = (self.settings.state_dir / "kafka" / "data" / "meta.properties").is_file()
        if formatted and (recorded or 1) != wanted:
            raise InfrastructureError(
                f"{self.settings.state_dir} holds a {recorded or 1}-broker Kafka; it cannot start as {wanted}",
                hint=f"`vlm local down`, then delete {self.settings.state_dir}/kafka* (its topics are lost), or "
                "set VLM_STATE_DIR to another directory",
            )
        secure = self.settings.kafka_security_dir.is_dir()
        if formatted and secure != self.settings.kafka_secure:
            raise InfrastructureError(
                f"{self.settings.state_dir} holds a Kafka formatted {'with' if secure else 'without'} SASL/TLS; "
                f"it cannot start {'with' if self.settings.kafka_secure else 'without'} it",
                hint=f"`vlm local down`, then delete {self.settings.state_dir}/kafka* (its topics are lost), or "
                "set VLM_STATE_DIR to another directory",
            )
        self.settings.brokers_file.parent.mkdir(parents=True, exist_ok=True)
        self.settings.brokers_file.write_text(f"{wanted}\n")

    def _record_placement(self) -> None:
        """A running stack keeps the CPUs it started on: its processes run where it put them."""
        wanted = self.settings.model_cpus.strip()
        self.settings.placement()  # a CPU list this machine cannot have fails before a start
        recorded = self.settings.recorded_model_cpus() or ""
        running = [s.name for s in self.services.values() if s.pid() is not None]
        if running and recorded != wanted:
            kept = f"keeps CPUs {recorded} for the model" if recorded else "reserves no CPUs for the model"
            raise InfrastructureError(
                f"the running stack ({', '.join(running)}) {kept}; it cannot start with model CPUs "
                f"{wanted or '(none)'} beside that",
                hint="`vlm local down`, then `vlm local up` with the --model-cpus you want",
            )
        if wanted:
            self.settings.model_cpus_file.parent.mkdir(parents=True, exist_ok=True)
            self.settings.model_cpus_file.write_text(f"{wanted}\n")
        else:
            self.settings.model_cpus_file.unlink(missing_ok=True)

    def down(self, names: list[str] | None = None) -> list[ServiceStatus]:
        services = list(reversed(self.select(names, optional=True)))
        # Every Kafka node at once: one stopped after the others waits out its controlled
        # shutdown for a quorum that is gone.
        for service in services:
            if not isinstance(service, KafkaService):
                service.stop()
        brokers = [s for s in services if isinstance(s, KafkaService)]
        terminated = [(broker, broker.terminate()) for broker in brokers]
        for broker, pid in terminated:
            if pid is not None:
                broker.reap(pid)
        if all(s.pid() is None for s in self.services.values()):
            self.settings.model_cpus_file.unlink(missing_ok=True)
        return [s.status() for s in self.select(names, optional=True)]

    def status(self) -> list[ServiceStatus]:
        return [s.status() for s in self.services.values()]


def _kafka_cluster_id() -> str:
    """A random cluster id as Kafka makes them: URL-safe base64 of a UUID, never starting
    with '-' (the storage tool would read that as an option)."""
    import base64

    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


_FAILURE = re.compile(r"\b(ERROR|FATAL|Exception|Error:|Address already in use)")


def _log_excerpt(path: Path, lines: int = 12, causes: int = 5) -> str:
    """The first lines that name a failure (a broker logs a long orderly shutdown after the
    cause, so its tail alone hides why), then the last lines."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    first = [line for line in text if _FAILURE.search(line)][:causes]
    return "\n".join([*first, "...", *text[-lines:]] if first else text[-lines:])


def create_default_topics(bootstrap: str, partitions: int = 4, replication: int | None = None) -> None:
    from services.kafka_io import TopicSpec, ensure_topics

    topics = Topics()
    ensure_topics(
        bootstrap,
        [
            TopicSpec(topics.frames, partitions, retention_ms=3_600_000),
            TopicSpec(topics.results, partitions),
            TopicSpec(topics.dlq, 1),
            TopicSpec(topics.labels, 1),
            TopicSpec(topics.to_label, 1),
            TopicSpec(topics.events, partitions),
            # co-partitioned with the frames: a partition's new owner reads its cameras' states
            TopicSpec(topics.tracks_state, partitions, compact=True),
        ],
        replication=replication,
    )
