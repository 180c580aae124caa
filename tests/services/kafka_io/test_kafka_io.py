import pytest

from services.kafka_io import security_options
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
