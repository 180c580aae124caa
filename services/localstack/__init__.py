"""The local single-node stack: Kafka (KRaft), Ray, Prometheus, started and stopped by PID."""

from services.localstack.stack import LocalStack, PrometheusService, create_default_topics

__all__ = ["LocalStack", "PrometheusService", "create_default_topics"]
