"""The secure local stack's certificates, SCRAM users and client settings (keytool is real)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from services.kafka_io import security_options
from services.localstack.security import PRINCIPALS, KafkaSecurity, use_operator_credentials
from vlm_core.config import LocalSettings
from vlm_core.errors import InfrastructureError


@pytest.fixture(scope="module")
def security(tmp_path_factory: pytest.TempPathFactory) -> KafkaSecurity:
    made = KafkaSecurity(tmp_path_factory.mktemp("state") / "kafka-security")
    made.ensure()
    return made


def test_ca_signs_a_broker_certificate_for_loopback(security: KafkaSecurity) -> None:
    context = ssl.create_default_context(cafile=str(security.ca_file))
    assert context.get_ca_certs()[0]["subject"] == ((("commonName", "vlm-stream local CA"),),)
    assert security.keystore.is_file() and security.truststore.is_file()
    assert all((security.dir / f"{p}.env").stat().st_mode & 0o077 == 0 for p in PRINCIPALS)


def test_ensure_keeps_what_it_made(security: KafkaSecurity) -> None:
    before = security.password("ingest"), security.ca_file.read_bytes()
    security.ensure()
    assert (security.password("ingest"), security.ca_file.read_bytes()) == before


def test_each_principal_has_its_own_password_and_client_settings(security: KafkaSecurity) -> None:
    assert len({security.password(p) for p in PRINCIPALS}) == len(PRINCIPALS)
    options = security_options(security.client_env("processor"))
    assert options == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "processor",
        "sasl_plain_password": security.password("processor"),
        "ssl_cafile": str(security.ca_file),
    }
    args = security.format_args()
    assert args.count("--add-scram") == len(PRINCIPALS)
    assert f"SCRAM-SHA-512=[name=trainer,password={security.password('trainer')}]" in args


def test_broker_listens_sasl_ssl_with_an_authorizer(security: KafkaSecurity) -> None:
    props = dict(line.split("=", 1) for line in security.broker_properties(9092, 9093).splitlines() if "=" in line)
    assert props["listeners"] == "SASL_SSL://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093"
    assert props["inter.broker.listener.name"] == "SASL_SSL"
    assert props["authorizer.class.name"].endswith("StandardAuthorizer")
    assert props["allow.everyone.if.no.acl.found"] == "false"


def test_operator_acts_as_admin_unless_told_otherwise(security: KafkaSecurity) -> None:
    settings = LocalSettings(state_dir=security.dir.parent, kafka_secure=True)
    env: dict[str, str] = {}
    use_operator_credentials(settings, env)
    assert env["VLM_KAFKA_SASL_USERNAME"] == "admin"
    chosen = {"VLM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "VLM_KAFKA_SASL_USERNAME": "ingest"}
    use_operator_credentials(settings, chosen)
    assert chosen["VLM_KAFKA_SASL_USERNAME"] == "ingest"
    plain: dict[str, str] = {}
    use_operator_credentials(LocalSettings(state_dir=security.dir.parent), plain)
    assert plain == {}


def test_a_secure_state_dir_is_recognised(security: KafkaSecurity) -> None:
    assert LocalSettings.from_env({"VLM_STATE_DIR": str(security.dir.parent)}).kafka_secure
    assert not LocalSettings.from_env({"VLM_STATE_DIR": str(security.dir.parent), "VLM_KAFKA_SECURE": "0"}).kafka_secure


def test_missing_secret_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InfrastructureError, match=r"ingest\.password is missing"):
        KafkaSecurity(tmp_path).password("ingest")
