import logging
from collections.abc import Callable

import pytest
from kafka.errors import KafkaConnectionError, KafkaTimeoutError, SaslAuthenticationFailedError

from services.kafka_io import HANG_UP, SECURITY_ENV, _connect, security_options
from vlm_core.errors import InfrastructureError


def test_security_options_from_environment() -> None:
    assert security_options({}) == {}
    env = {
        "VLM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "VLM_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "VLM_KAFKA_SASL_USERNAME": "vlm",
        "VLM_KAFKA_SASL_PASSWORD": "secret",
        "VLM_KAFKA_SSL_CAFILE": "/etc/kafka/ca.crt",
        "VLM_KAFKA_SASL_USERNAME_UNRELATED": "ignored",
    }
    assert security_options(env) == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "vlm",
        "sasl_plain_password": "secret",
        "ssl_cafile": "/etc/kafka/ca.crt",
    }


def test_unknown_security_protocol_is_a_clear_error() -> None:
    with pytest.raises(InfrastructureError, match="not a Kafka security protocol"):
        security_options({"VLM_KAFKA_SECURITY_PROTOCOL": "TLS"})


def bootstrap_that_logs(*failures: Exception) -> Callable[..., object]:
    """A client factory that logs each failed bootstrap attempt the way kafka-python 3.0 does,
    then gives up as it does at its deadline."""

    def factory(**config: object) -> object:
        for failure in failures:
            logging.getLogger("kafka.net.manager").warning(
                "Bootstrap connection to %s failed: %s", "bootstrap-0", failure
            )
        raise KafkaTimeoutError("Unable to bootstrap from 127.0.0.1:9092")

    return factory


SASL = {
    "VLM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "VLM_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
    "VLM_KAFKA_SASL_USERNAME": "trainer",
    "VLM_KAFKA_SASL_PASSWORD": "not-the-password",
}


def test_a_logged_refusal_is_reported_as_the_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in SASL.items():
        monkeypatch.setenv(name, value)
    refusal = SaslAuthenticationFailedError("Authentication failed due to invalid credentials")
    factory = bootstrap_that_logs(KafkaConnectionError(HANG_UP), refusal)
    with pytest.raises(InfrastructureError, match=r"refused user 'trainer' \(SCRAM-SHA-512\): .*invalid credentials"):
        _connect(factory, "127.0.0.1:9092")


def test_a_hang_up_while_authenticating_is_a_refusal_when_no_refusal_was_read(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in SASL.items():
        monkeypatch.setenv(name, value)
    factory = bootstrap_that_logs(KafkaConnectionError(HANG_UP), KafkaConnectionError(HANG_UP))
    with pytest.raises(InfrastructureError, match=r"refused user .trainer.*closed the connection while authenticating"):
        _connect(factory, "127.0.0.1:9092")


def test_without_sasl_a_hang_up_or_a_refused_connection_is_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SECURITY_ENV:
        monkeypatch.delenv(name, raising=False)
    factory = bootstrap_that_logs(KafkaConnectionError(HANG_UP), KafkaConnectionError("[Errno 111] refused"))
    with pytest.raises(InfrastructureError, match=r"cannot reach Kafka at 127\.0\.0\.1:9092"):
        _connect(factory, "127.0.0.1:9092")
    for name, value in SASL.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(InfrastructureError, match="cannot reach Kafka"):
        _connect(bootstrap_that_logs(KafkaConnectionError("[Errno 111] refused")), "127.0.0.1:9092")
