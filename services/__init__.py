"""Thin deployables wiring vlm_core to Kafka and Ray: ingest, inference, trainer."""
