"""The frame contract: one camera image on Kafka.

Key = camera id (one camera stays ordered on one partition), value = the encoded image
bytes (never base64), headers = metadata. Every field is validated on the way in.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from vlm_core.errors import (
    FrameDecodeError,
    FrameDimensionMismatchError,
    FrameError,
    FrameHeaderError,
    FrameTooLargeError,
    UnsupportedEncodingError,
    VlmError,
)

FRAME_SCHEMA_VERSION = "vlm.frame/v1"
_CAMERA_ID_MAX = 128


class Encoding(str, enum.Enum):
    JPEG = "jpeg"
    PNG = "png"
    #: Raw 8-bit BGR pixels, row-major, ``height * width * 3`` bytes.
    RAW = "raw"


class Header(str, enum.Enum):
    SCHEMA = "vlm-schema"
    CAMERA_ID = "vlm-camera-id"
    SEQ = "vlm-seq"
    CAPTURE_TS_MS = "vlm-capture-ts-ms"
    WIDTH = "vlm-width"
    HEIGHT = "vlm-height"
    ENCODING = "vlm-encoding"


@dataclass(frozen=True)
class FrameLimits:
    """Upper bounds that protect the pipeline from hostile or broken producers."""

    max_bytes: int = 8 * 1024 * 1024
    max_pixels: int = 4096 * 4096


DEFAULT_LIMITS = FrameLimits()

KafkaHeaders = list[tuple[str, bytes]]


@dataclass(frozen=True)
class KafkaRecord:
    """What goes on the wire for one frame."""

    key: bytes
    value: bytes
    headers: KafkaHeaders


@dataclass(frozen=True)
class Frame:
    camera_id: str
    seq: int
    capture_ts_ms: int
    width: int
    height: int
    encoding: Encoding
    data: bytes = field(repr=False)

    # -- construction -----------------------------------------------------------------
    @classmethod
    def from_image(
        cls,
        image: np.ndarray,
        *,
        camera_id: str,
        seq: int,
        capture_ts_ms: int | None = None,
        encoding: Encoding = Encoding.JPEG,
        jpeg_quality: int = 85,
    ) -> Frame:
        """Encode a BGR ``uint8`` image into a frame."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise FrameError(f"expected an HxWx3 uint8 BGR image, got shape {image.shape} {image.dtype}")
        height, width = image.shape[:2]
        return cls(
            camera_id=camera_id,
            seq=seq,
            capture_ts_ms=int(time.time() * 1000) if capture_ts_ms is None else capture_ts_ms,
            width=width,
            height=height,
            encoding=encoding,
            data=encode_image(image, encoding, jpeg_quality=jpeg_quality),
        )

    # -- wire format ------------------------------------------------------------------
    def to_kafka(self) -> KafkaRecord:
        headers: KafkaHeaders = [
            (Header.SCHEMA.value, FRAME_SCHEMA_VERSION.encode()),
            (Header.CAMERA_ID.value, self.camera_id.encode()),
            (Header.SEQ.value, str(self.seq).encode()),
            (Header.CAPTURE_TS_MS.value, str(self.capture_ts_ms).encode()),
            (Header.WIDTH.value, str(self.width).encode()),
            (Header.HEIGHT.value, str(self.height).encode()),
            (Header.ENCODING.value, self.encoding.value.encode()),
        ]
        return KafkaRecord(key=self.camera_id.encode(), value=self.data, headers=headers)

    @classmethod
    def from_kafka(
        cls,
        key: bytes | None,
        value: bytes | None,
        headers: Iterable[tuple[str, bytes | None]] | None,
        *,
        limits: FrameLimits = DEFAULT_LIMITS,
    ) -> Frame:
        """Parse and validate the metadata of a Kafka record (the image is not decoded)."""
        table = {name: raw for name, raw in (headers or [])}
        schema = _header_str(table, Header.SCHEMA)
        if schema != FRAME_SCHEMA_VERSION:
            raise FrameHeaderError(f"unsupported frame schema {schema!r}, expected {FRAME_SCHEMA_VERSION!r}")
        camera_id = _header_str(table, Header.CAMERA_ID)
        if not camera_id or len(camera_id) > _CAMERA_ID_MAX or not camera_id.isprintable():
            raise FrameHeaderError(f"camera id must be 1-{_CAMERA_ID_MAX} printable characters")
        if key is not None and key.decode("utf-8", "replace") != camera_id:
            raise FrameHeaderError(f"record key {key!r} differs from camera id header {camera_id!r}")
        seq = _header_int(table, Header.SEQ, minimum=0)
        capture_ts_ms = _header_int(table, Header.CAPTURE_TS_MS, minimum=0)
        width = _header_int(table, Header.WIDTH, minimum=1)
        height = _header_int(table, Header.HEIGHT, minimum=1)
        encoding_name = _header_str(table, Header.ENCODING)
        try:
            encoding = Encoding(encoding_name.lower())
        except ValueError:
            raise UnsupportedEncodingError(
                f"unsupported encoding {encoding_name!r}; use one of {[e.value for e in Encoding]}"
            ) from None
        data = value or b""
        if not data:
            raise FrameDecodeError("frame has no image bytes")
        if len(data) > limits.max_bytes:
            raise FrameTooLargeError(f"frame is {len(data)} bytes, limit is {limits.max_bytes}")
        if width * height > limits.max_pixels:
            raise FrameTooLargeError(f"frame is {width}x{height} pixels, limit is {limits.max_pixels}")
        return cls(camera_id, seq, capture_ts_ms, width, height, encoding, data)

    # -- pixels -----------------------------------------------------------------------
    def decode(self, *, limits: FrameLimits = DEFAULT_LIMITS) -> np.ndarray:
        """Decode to an HxWx3 BGR ``uint8`` array, checking it against the headers."""
        if len(self.data) > limits.max_bytes:
            raise FrameTooLargeError(f"frame is {len(self.data)} bytes, limit is {limits.max_bytes}")
        if self.width * self.height > limits.max_pixels:
            raise FrameTooLargeError(f"frame is {self.width}x{self.height} pixels, limit is {limits.max_pixels}")
        if self.encoding is Encoding.RAW:
            expected = self.width * self.height * 3
            if len(self.data) != expected:
                raise FrameDimensionMismatchError(
                    f"raw frame has {len(self.data)} bytes, {self.width}x{self.height}x3 needs {expected}"
                )
            return np.frombuffer(self.data, dtype=np.uint8).reshape(self.height, self.width, 3)
        image = decode_image(self.data, self.encoding)
        height, width = image.shape[:2]
        if (width, height) != (self.width, self.height):
            raise FrameDimensionMismatchError(f"headers say {self.width}x{self.height}, image is {width}x{height}")
        return image


def encode_image(image: np.ndarray, encoding: Encoding, *, jpeg_quality: int = 85) -> bytes:
    if encoding is Encoding.RAW:
        return np.ascontiguousarray(image).tobytes()
    ext = ".jpg" if encoding is Encoding.JPEG else ".png"
    params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)] if encoding is Encoding.JPEG else []
    ok, buf = cv2.imencode(ext, image, params)
    if not ok:
        raise FrameError(f"OpenCV could not encode a {image.shape} image as {encoding.value}")
    return buf.tobytes()


_MAGIC = {
    Encoding.JPEG: (b"\xff\xd8\xff",),
    Encoding.PNG: (b"\x89PNG\r\n\x1a\n",),
}


def decode_image(data: bytes, encoding: Encoding) -> np.ndarray:
    """Decode JPEG/PNG bytes with OpenCV. Truncated or foreign bytes raise FrameDecodeError."""
    if not any(data.startswith(m) for m in _MAGIC[encoding]):
        raise FrameDecodeError(f"bytes are not a {encoding.value} image (bad magic number)")
    if encoding is Encoding.JPEG and not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        # libjpeg happily pads a truncated JPEG with grey; a cut-off frame is corrupt.
        raise FrameDecodeError("JPEG is truncated (no end-of-image marker)")
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise FrameDecodeError(f"OpenCV could not decode the {encoding.value} bytes")
    return image


@dataclass(frozen=True)
class DecodeFailure:
    index: int
    error: FrameError


def decode_batch(
    frames: Sequence[Frame], *, limits: FrameLimits = DEFAULT_LIMITS
) -> tuple[list[np.ndarray], list[int], list[DecodeFailure]]:
    """Decode many frames. Returns (images, indices of the decoded frames, failures)."""
    images: list[np.ndarray] = []
    ok_indices: list[int] = []
    failures: list[DecodeFailure] = []
    for i, frame in enumerate(frames):
        try:
            images.append(frame.decode(limits=limits))
            ok_indices.append(i)
        except FrameError as exc:
            failures.append(DecodeFailure(i, exc))
    return images, ok_indices, failures


def decode_all(frames: Sequence[Frame], *, limits: FrameLimits = DEFAULT_LIMITS) -> list[np.ndarray]:
    """Decode every frame or raise the first FrameError."""
    return [frame.decode(limits=limits) for frame in frames]


def header_text(table: dict[str, bytes | None], name: str, error: type[VlmError]) -> str:
    """A UTF-8 Kafka header of a contract (frames, labels); raises ``error`` when it is
    missing or not text."""
    raw = table.get(name)
    if raw is None:
        raise error(f"missing header {name!r}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise error(f"header {name!r} is not UTF-8") from None


def _header_str(table: dict[str, bytes | None], header: Header) -> str:
    return header_text(table, header.value, FrameHeaderError)


def _header_int(table: dict[str, bytes | None], header: Header, *, minimum: int) -> int:
    text = _header_str(table, header)
    try:
        value = int(text)
    except ValueError:
        raise FrameHeaderError(f"header {header.value!r} is not an integer: {text[:32]!r}") from None
    if value < minimum:
        raise FrameHeaderError(f"header {header.value!r} must be >= {minimum}, got {value}")
    return value
