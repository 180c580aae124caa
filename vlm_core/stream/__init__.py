"""The streaming core: the StreamProcessor over small ports, its sinks and its health.

Adding a stage or a sink means one module here.
"""

from vlm_core.contracts.dlq import DLQ_ERROR_HEADER, DLQ_REASON_HEADER, DLQ_SOURCE_HEADER, dlq_reason
from vlm_core.stream.defaults import kafka_sinks
from vlm_core.stream.events import EventsToKafka
from vlm_core.stream.health import RestartWindow
from vlm_core.stream.ports import (
    FrameConsumer,
    ModelClient,
    Pending,
    Producer,
    Record,
    StateRecord,
    StateStore,
    TopicPartition,
)
from vlm_core.stream.processor import (
    INTERNAL_ERROR,
    MODEL_ERROR,
    PRODUCE_ERROR,
    BatchFailedError,
    BatchTiming,
    SendRule,
    StreamProcessor,
    describe_error,
)
from vlm_core.stream.sinks import DeadLetterSink, Processed, Rejected, ResultSink, Sinks
from vlm_core.stream.tracks import TrackingStage

__all__ = [
    "DLQ_ERROR_HEADER",
    "DLQ_REASON_HEADER",
    "DLQ_SOURCE_HEADER",
    "INTERNAL_ERROR",
    "MODEL_ERROR",
    "PRODUCE_ERROR",
    "BatchFailedError",
    "BatchTiming",
    "DeadLetterSink",
    "EventsToKafka",
    "FrameConsumer",
    "ModelClient",
    "Pending",
    "Processed",
    "Producer",
    "Record",
    "Rejected",
    "RestartWindow",
    "ResultSink",
    "SendRule",
    "Sinks",
    "StateRecord",
    "StateStore",
    "StreamProcessor",
    "TopicPartition",
    "TrackingStage",
    "describe_error",
    "dlq_reason",
    "kafka_sinks",
]
