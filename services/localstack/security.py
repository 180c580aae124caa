"""SASL/SCRAM-SHA-512 over TLS for the local broker: ``vlm local up --secure``.

The certificates are made with the JDK's keytool: a CA for the stack, and one broker
certificate it signs for 127.0.0.1. The SCRAM users are written into the metadata log when
the storage is formatted (``--add-scram``), so no broker ever starts without them. Each
principal's client settings land in ``<state>/kafka-security/<principal>.env`` as the
``VLM_KAFKA_*`` variables every client of the project reads, e.g.
``set -a; . ~/.local/state/vlm-stream/kafka-security/ingest.env``.

``admin`` is the brokers' own principal and a super user, for the operator's CLI. The
controller listener stays PLAINTEXT on loopback: KRaft controllers cannot check SCRAM
credentials (they live in the log the controllers serve), so its anonymous principal is
a super user too, reachable only from this machine.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path

from vlm_core.config import LocalSettings
from vlm_core.errors import InfrastructureError

MECHANISM = "SCRAM-SHA-512"
ADMIN = "admin"
#: Every principal of the local secure stack; what each may do is services.kafka_io.acls.
PRINCIPALS = (ADMIN, "ingest", "processor", "trainer", "labeler")
_CA_ALIAS, _BROKER_ALIAS = "vlm-ca", "broker"
_CERT_DAYS = "825"


@dataclass(frozen=True)
class KafkaSecurity:
    """The certificates and SCRAM credentials of one local stack (its state dir)."""

    dir: Path

    @property
    def ca_file(self) -> Path:
        return self.dir / "ca.pem"

    @property
    def keystore(self) -> Path:
        return self.dir / "broker.p12"

    @property
    def truststore(self) -> Path:
        return self.dir / "truststore.p12"

    def exists(self) -> bool:
        return (self.dir / ".complete").is_file()

    def password(self, principal: str) -> str:
        return self._secret(f"{principal}.password")

    def ensure(self) -> None:
        """Make the passwords and certificates once; later calls keep them."""
        if self.exists():
            return
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        for principal in PRINCIPALS:
            self._secret(f"{principal}.password", create=True)
        store_password = self._secret("store.password", create=True)
        for path in (self.dir / "ca.p12", self.keystore, self.truststore, self.ca_file):
            path.unlink(missing_ok=True)
        ca, store = self.dir / "ca.p12", ["-storetype", "PKCS12", "-storepass", store_password]
        san = "SAN=IP:127.0.0.1,DNS:localhost"
        self._keytool(
            "-genkeypair", "-alias", _CA_ALIAS, "-keyalg", "RSA", "-keysize", "2048",
            "-dname", "CN=vlm-stream local CA", "-ext", "bc:c", "-validity", _CERT_DAYS,
            "-keystore", str(ca), *store,
        )  # fmt: skip
        self._keytool(
            "-exportcert", "-rfc", "-alias", _CA_ALIAS, "-keystore", str(ca), "-file", str(self.ca_file), *store
        )  # fmt: skip
        self._keytool(
            "-genkeypair", "-alias", _BROKER_ALIAS, "-keyalg", "RSA", "-keysize", "2048",
            "-dname", "CN=127.0.0.1", "-ext", san, "-validity", _CERT_DAYS, "-keystore", str(self.keystore), *store,
        )  # fmt: skip
        request, signed = self.dir / "broker.csr", self.dir / "broker.pem"
        self._keytool(
            "-certreq", "-alias", _BROKER_ALIAS, "-keystore", str(self.keystore), "-file", str(request), *store
        )  # fmt: skip
        self._keytool(
            "-gencert", "-rfc", "-alias", _CA_ALIAS, "-keystore", str(ca), "-infile", str(request),
            "-outfile", str(signed), "-ext", san, "-validity", _CERT_DAYS, *store,
        )  # fmt: skip
        for keystore, alias, cert in (
            (self.keystore, _CA_ALIAS, self.ca_file),
            (self.keystore, _BROKER_ALIAS, signed),
            (self.truststore, _CA_ALIAS, self.ca_file),
        ):
            self._keytool(
                "-importcert", "-noprompt", "-alias", alias, "-file", str(cert), "-keystore", str(keystore), *store
            )
        request.unlink()
        for principal in PRINCIPALS:
            env_file = self.dir / f"{principal}.env"
            env_file.write_text("".join(f"{k}={v}\n" for k, v in self.client_env(principal).items()))
            env_file.chmod(0o600)
        (self.dir / ".complete").touch()

    def client_env(self, principal: str) -> dict[str, str]:
        """The ``VLM_KAFKA_*`` variables a client of ``principal`` runs with."""
        return {
            "VLM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "VLM_KAFKA_SASL_MECHANISM": MECHANISM,
            "VLM_KAFKA_SASL_USERNAME": principal,
            "VLM_KAFKA_SASL_PASSWORD": self.password(principal),
            "VLM_KAFKA_SSL_CAFILE": str(self.ca_file),
        }

    def format_args(self) -> list[str]:
        """``kafka-storage format`` arguments that create every SCRAM user."""
        args: list[str] = []
        for principal in PRINCIPALS:
            args += ["--add-scram", f"{MECHANISM}=[name={principal},password={self.password(principal)}]"]
        return args

    def broker_properties(self, port: int, controller_port: int) -> str:
        admin_password = self.password(ADMIN)
        store_password = self._secret("store.password")
        return "\n".join(
            [
                f"listeners=SASL_SSL://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
                f"advertised.listeners=SASL_SSL://127.0.0.1:{port}",
                "listener.security.protocol.map=CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL",
                "inter.broker.listener.name=SASL_SSL",
                f"sasl.enabled.mechanisms={MECHANISM}",
                f"sasl.mechanism.inter.broker.protocol={MECHANISM}",
                "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config="
                "org.apache.kafka.common.security.scram.ScramLoginModule required "
                f'username="{ADMIN}" password="{admin_password}";',
                f"ssl.keystore.location={self.keystore}",
                "ssl.keystore.type=PKCS12",
                f"ssl.keystore.password={store_password}",
                f"ssl.truststore.location={self.truststore}",
                "ssl.truststore.type=PKCS12",
                f"ssl.truststore.password={store_password}",
                "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
                f"super.users=User:{ADMIN};User:ANONYMOUS",
                "allow.everyone.if.no.acl.found=false",
            ]
        )

    def _secret(self, name: str, *, create: bool = False) -> str:
        path = self.dir / name
        if create and not path.is_file():
            path.write_text(secrets.token_urlsafe(24))
            path.chmod(0o600)
        try:
            return path.read_text().strip()
        except OSError:
            raise InfrastructureError(
                f"the local Kafka security files in {self.dir} are incomplete ({name} is missing)",
                hint=f"`vlm local down`, delete {self.dir.parent}/kafka* (its topics are lost), then "
                "`vlm local up --secure`",
            ) from None

    def _keytool(self, *args: str) -> None:
        proc = subprocess.run(["keytool", *args], capture_output=True, text=True)
        if proc.returncode != 0:
            raise InfrastructureError(f"keytool {args[0]} failed: {(proc.stderr or proc.stdout).strip()[-1000:]}")


def use_operator_credentials(settings: LocalSettings, environ: MutableMapping[str, str] = os.environ) -> None:
    """On a secure local stack, a command run without ``VLM_KAFKA_*`` acts as ``admin``, the
    operator; one run with a principal's env file sourced acts as that principal."""
    security = KafkaSecurity(settings.kafka_security_dir)
    if settings.kafka_secure and security.exists() and not environ.get("VLM_KAFKA_SECURITY_PROTOCOL"):
        environ.update(security.client_env(ADMIN))
