"""Typed errors. Every bad input raises one of these, never a bare ValueError."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError


class VlmError(Exception):
    """Base class of every error vlm-stream raises on purpose."""

    #: A short hint telling the user how to fix the problem; shown by the CLI.
    hint: str = ""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint


class ConfigError(VlmError):
    """A configuration file or option is wrong."""


class FrameError(VlmError):
    """A frame failed validation. ``reason`` is a stable, machine-readable code."""

    reason: str = "invalid_frame"


class FrameHeaderError(FrameError):
    """A required header is missing or cannot be parsed."""

    reason = "bad_header"


class FrameTimestampError(FrameHeaderError):
    """The capture time lies implausibly far in the future (a camera clock is wrong)."""

    reason = "bad_timestamp"


class UnsupportedEncodingError(FrameError):
    reason = "unsupported_encoding"


class FrameDecodeError(FrameError):
    """The bytes are not a decodable image of the declared encoding."""

    reason = "undecodable"


class FrameTooLargeError(FrameError):
    """The frame exceeds the configured byte or pixel limits."""

    reason = "too_large"


class FrameDimensionMismatchError(FrameError):
    """The decoded image's size differs from the width/height headers."""

    reason = "dimension_mismatch"


class ResultError(VlmError):
    """A result document does not match the vlm.result schema."""


class ModelError(VlmError):
    """A model cannot be built or run."""


class UnknownArchitectureError(ModelError):
    pass


class WeightsError(ModelError):
    """Weights cannot be found or do not fit the architecture."""


class UnsafeWeightsError(WeightsError):
    """A checkpoint would need arbitrary code (a pickle with globals) to load."""


class DatasetError(VlmError):
    """A dataset is missing, malformed or inconsistent."""


class LabelError(DatasetError):
    """A record on the labels topic breaks the ``vlm.labels/v1`` contract.
    ``reason`` is a stable, machine-readable code, counted when a snapshot skips it."""

    def __init__(self, message: str, *, reason: str = "bad_header", hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.reason = reason


class SourceError(VlmError):
    """A camera source cannot be read. ``permanent`` errors (bad parameters, a file that is
    not a video) fail at once; the others (network, a busy camera) are retried with backoff."""

    def __init__(self, message: str, *, permanent: bool, reason: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.permanent = permanent
        self.reason = reason


class InfrastructureError(VlmError):
    """A local service (Kafka, Ray, Prometheus) cannot be started or reached."""


def first_error(exc: ValidationError, root: str = "<root>") -> tuple[str, str]:
    """Where (a dotted path) and what of a validation error's first problem: the one line a
    user sees for a bad config file or option."""
    first = exc.errors()[0]
    return ".".join(str(p) for p in first["loc"]) or root, first["msg"]
