"""The frame contract: one camera image on Kafka.

Key = camera id (one camera stays ordered on one partition), value = the encoded image
bytes (never base64), headers = metadata. Every field is validated on the way in.
"""

from __future__ import annotations

import enum
import re
import struct
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from vlm_core.contracts.truth import TRUTH_HEADER, FrameTruth
from vlm_core.errors import (
    FrameDecodeError,
    FrameDimensionMismatchError,
    FrameError,
    FrameHeaderError,
    FrameTimestampError,
    FrameTooLargeError,
    UnsupportedEncodingError,
    VlmError,
)

FRAME_SCHEMA_VERSION = "vlm.frame/v1"
CAMERA_ID_MAX = 128
#: Sequence numbers and timestamps fit a signed 64-bit integer, so Java, Go and SQL
#: readers of results can hold them.
INT64_MAX = 2**63 - 1
_INTEGER = re.compile(r"-?[0-9]{1,20}")


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
    #: How far a capture time may lie ahead of the processor's clock (camera clock skew).
    max_future_ms: int = 24 * 3600 * 1000


DEFAULT_LIMITS = FrameLimits()

KafkaHeaders = list[tuple[str, bytes]]


@dataclass(frozen=True)
class KafkaRecord:
    """What goes on the wire for one frame."""

    key: bytes
    value: bytes
    headers: KafkaHeaders

    def fields(self) -> tuple[bytes, bytes, KafkaHeaders]:
        """(key, value, headers), as a producer's send takes them."""
        return self.key, self.value, self.headers


@dataclass(frozen=True)
class Frame:
    camera_id: str
    seq: int
    capture_ts_ms: int
    width: int
    height: int
    encoding: Encoding
    data: bytes = field(repr=False)
    #: Ground truth from a synthetic camera (the optional ``vlm-truth`` header).
    truth: FrameTruth | None = field(default=None, repr=False, compare=False)

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
        truth: FrameTruth | None = None,
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
            truth=truth,
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
        if self.truth is not None:
            headers.append(self.truth.to_header())
        return KafkaRecord(key=self.camera_id.encode(), value=self.data, headers=headers)

    @classmethod
    def from_kafka(
        cls,
        key: bytes | None,
        value: bytes | None,
        headers: Iterable[tuple[str, bytes | None]] | None,
        *,
        limits: FrameLimits = DEFAULT_LIMITS,
        now_ms: int | None = None,
    ) -> Frame:
        """Parse and validate the metadata of a Kafka record (the image is not decoded).
        ``now_ms`` is the clock future capture times are checked against (default: now)."""
        table = {name: raw for name, raw in (headers or [])}
        schema = _header_str(table, Header.SCHEMA)
        if schema != FRAME_SCHEMA_VERSION:
            raise FrameHeaderError(f"unsupported frame schema {schema[:64]!r}, expected {FRAME_SCHEMA_VERSION!r}")
        camera_id = _header_str(table, Header.CAMERA_ID)
        validate_camera_id(camera_id)
        if key is not None and key != camera_id.encode():
            raise FrameHeaderError(f"record key {key[:140]!r} differs from camera id header {camera_id!r}")
        seq = _header_int(table, Header.SEQ, minimum=0)
        capture_ts_ms = _header_int(table, Header.CAPTURE_TS_MS, minimum=0)
        now = int(time.time() * 1000) if now_ms is None else now_ms
        if capture_ts_ms - now > limits.max_future_ms:
            raise FrameTimestampError(
                f"capture time {capture_ts_ms} ms is {(capture_ts_ms - now) / 3_600_000:.1f} h ahead of this clock "
                f"(limit {limits.max_future_ms / 3_600_000:.1f} h); check the camera's clock"
            )
        width = _header_int(table, Header.WIDTH, minimum=1)
        height = _header_int(table, Header.HEIGHT, minimum=1)
        encoding_name = _header_str(table, Header.ENCODING)
        try:
            encoding = Encoding(encoding_name.lower())
        except ValueError:
            raise UnsupportedEncodingError(
                f"unsupported encoding {encoding_name[:32]!r}; use one of {[e.value for e in Encoding]}"
            ) from None
        data = value or b""
        if not data:
            raise FrameDecodeError("frame has no image bytes")
        if len(data) > limits.max_bytes:
            raise FrameTooLargeError(f"frame is {len(data)} bytes, limit is {limits.max_bytes}")
        if width * height > limits.max_pixels:
            raise FrameTooLargeError(f"frame is {width}x{height} pixels, limit is {limits.max_pixels}")
        raw_truth = table.get(TRUTH_HEADER)
        truth = FrameTruth.from_header(raw_truth) if raw_truth is not None else None
        return cls(camera_id, seq, capture_ts_ms, width, height, encoding, data, truth)

    # -- pixels -----------------------------------------------------------------------
    def decode(self, *, limits: FrameLimits = DEFAULT_LIMITS) -> np.ndarray:
        """Decode to an HxWx3 BGR ``uint8`` array, checking it against the headers."""
        self.check(limits=limits)
        return self.pixels()

    def check(self, *, limits: FrameLimits = DEFAULT_LIMITS) -> None:
        """Everything :meth:`decode` checks short of decoding the pixels: the limits, a raw
        frame's length, an encoded frame's structure (magic number, JPEG segments up to the
        end marker, PNG header) and its own size against the headers. A frame that passed
        can be decoded later, elsewhere (:meth:`pixels` in a model replica)."""
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
            return
        check_encoded(self.data, self.encoding, limits.max_pixels, (self.width, self.height))

    def pixels(self, scale: int = 1) -> np.ndarray:
        """The pixels of a frame that passed :meth:`check`, as an HxWx3 BGR ``uint8`` array.

        ``scale`` 2, 4 or 8 decodes a JPEG at that fraction of its size in the DCT domain
        (libjpeg's scaled decoding: several times faster than decoding it whole and
        resizing); other encodings ignore it. Raises FrameDecodeError where the codec
        refuses bytes of a sound structure, and FrameDimensionMismatchError where EXIF
        orientation turned the image."""
        if self.encoding is Encoding.RAW:
            return np.frombuffer(self.data, dtype=np.uint8).reshape(self.height, self.width, 3)
        if scale not in _REDUCED_FLAGS:
            raise ValueError(f"scale must be one of {sorted(_REDUCED_FLAGS)}, got {scale}")
        if self.encoding is not Encoding.JPEG:
            scale = 1
        image = _imdecode(self.data, self.encoding, _REDUCED_FLAGS[scale])
        height, width = image.shape[:2]
        if (width, height) != (-(-self.width // scale), -(-self.height // scale)):
            raise FrameDimensionMismatchError(
                f"headers say {self.width}x{self.height}, image is {width}x{height} at 1/{scale}"
            )
        return image


#: imdecode flags by JPEG decoding scale.
_REDUCED_FLAGS = {
    1: cv2.IMREAD_COLOR,
    2: cv2.IMREAD_REDUCED_COLOR_2,
    4: cv2.IMREAD_REDUCED_COLOR_4,
    8: cv2.IMREAD_REDUCED_COLOR_8,
}


def jpeg_scale(width: int, height: int, short_side: int | None) -> int:
    """The largest JPEG decoding scale (1, 2, 4 or 8) that keeps the image's shorter side
    at ``short_side`` pixels or more; 1 where ``short_side`` is None (full resolution)."""
    if short_side is None:
        return 1
    return next((f for f in (8, 4, 2) if min(width, height) // f >= short_side), 1)


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


def _check_magic(data: bytes, encoding: Encoding) -> None:
    if any(data.startswith(m) for m in _MAGIC[encoding]):
        return
    actual = next((e.value for e, magics in _MAGIC.items() if any(data.startswith(m) for m in magics)), None)
    found = f"a {actual} image" if actual else "not an image of a known kind"
    raise FrameDecodeError(f"bytes are not a {encoding.value} image (bad magic number): they are {found}")


#: JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic); not DHT/JPG/DAC.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
#: Markers without a length field: TEM and the restart markers (SOI/EOI handled apart).
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})


def _jpeg_scan(data: bytes) -> tuple[int, int, int]:
    """Walk a JPEG's marker segments: (width, height, offset just past the end-of-image
    marker). Entropy-coded data is skipped by its byte stuffing, and segments (EXIF
    thumbnails carry their own end marker) by their lengths, so bytes after the image
    (camera trailers) are allowed and a cut-off image is caught. Raises FrameDecodeError."""
    size: tuple[int, int] | None = None
    pos, end = 2, len(data)
    while True:
        if pos + 2 > end:
            raise FrameDecodeError("JPEG is truncated (no end-of-image marker)")
        if data[pos] != 0xFF:
            raise FrameDecodeError(f"JPEG is corrupt (no marker at byte {pos})")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xD9:
            if size is None:
                raise FrameDecodeError("JPEG has no frame header")
            return size[0], size[1], pos + 2
        if marker in _JPEG_STANDALONE:
            pos += 2
            continue
        if pos + 4 > end:
            raise FrameDecodeError("JPEG is truncated (inside a segment header)")
        (length,) = struct.unpack_from(">H", data, pos + 2)
        if length < 2:
            raise FrameDecodeError(f"JPEG is corrupt (segment length {length} at byte {pos})")
        if marker in _JPEG_SOF and size is None:
            if pos + 9 > end:
                raise FrameDecodeError("JPEG is truncated (inside the frame header)")
            height, width = struct.unpack_from(">HH", data, pos + 5)
            size = (width, height)
        pos += 2 + length
        if marker == 0xDA:  # start of scan: entropy-coded data up to the next real marker
            if size is None:
                raise FrameDecodeError("JPEG has no frame header before its scan")
            while True:
                pos = data.find(b"\xff", pos)
                if pos < 0 or pos + 1 >= end:
                    raise FrameDecodeError("JPEG is truncated (no end-of-image marker)")
                following = data[pos + 1]
                if following == 0x00 or 0xD0 <= following <= 0xD7:
                    pos += 2
                    continue
                break


def encoded_size(data: bytes, encoding: Encoding) -> tuple[int, int]:
    """(width, height) from a JPEG's frame header or a PNG's IHDR, without decoding pixels."""
    _check_magic(data, encoding)
    if encoding is Encoding.JPEG:
        width, height, _end = _jpeg_scan(data)
    else:
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise FrameDecodeError("PNG is truncated or has no IHDR header")
        width, height = struct.unpack_from(">II", data, 16)
    if width < 1 or height < 1:
        raise FrameDecodeError(f"{encoding.value} image declares an empty size {width}x{height}")
    return width, height


def decode_image(
    data: bytes,
    encoding: Encoding,
    *,
    max_pixels: int = DEFAULT_LIMITS.max_pixels,
    expected_size: tuple[int, int] | None = None,
) -> np.ndarray:
    """Decode JPEG/PNG bytes with OpenCV. Truncated or foreign bytes raise FrameDecodeError;
    bytes after a JPEG's end-of-image marker are ignored, as OpenCV ignores them.

    The image's own (width, height) is read before any pixel is decoded: a small file can
    claim gigapixels (a decompression bomb), so ``max_pixels`` applies to it, and so does
    ``expected_size`` (what the headers say). The walk to the JPEG's end marker also
    catches a cut-off frame, which libjpeg would pad with grey."""
    check_encoded(data, encoding, max_pixels, expected_size)
    return _imdecode(data, encoding, cv2.IMREAD_COLOR)


def check_encoded(
    data: bytes, encoding: Encoding, max_pixels: int, expected_size: tuple[int, int] | None = None
) -> None:
    """The encoded image's own size against the pixel limit (a small file can claim
    gigapixels) and against ``expected_size`` (what the headers say), before any pixel is
    decoded; the structure walk of :func:`encoded_size` included."""
    width, height = encoded_size(data, encoding)
    if width * height > max_pixels:
        raise FrameTooLargeError(f"encoded image is {width}x{height} pixels, limit is {max_pixels}")
    if expected_size is not None and (width, height) != expected_size:
        raise FrameDimensionMismatchError(
            f"headers say {expected_size[0]}x{expected_size[1]}, image is {width}x{height}"
        )


def _imdecode(data: bytes, encoding: Encoding, flag: int) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flag)
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


def validate_camera_id(camera_id: str) -> None:
    """The accepted camera ids: 1-128 Unicode code points, each printable (``str.isprintable``:
    letters, marks, digits, punctuation, symbols including emoji, and the ASCII space; no
    control, format, line/paragraph separator, surrogate or unassigned code points)."""
    if not camera_id or len(camera_id) > CAMERA_ID_MAX or not camera_id.isprintable():
        raise FrameHeaderError(
            f"camera id {camera_id[:CAMERA_ID_MAX]!r}{'...' if len(camera_id) > CAMERA_ID_MAX else ''} "
            f"({len(camera_id)} code points) must be 1-{CAMERA_ID_MAX} printable characters"
        )


def _header_int(table: dict[str, bytes | None], header: Header, *, minimum: int) -> int:
    text = _header_str(table, header)
    # Decimal ASCII only: int() would also take "1_000", " 7" and non-ASCII digits.
    if not _INTEGER.fullmatch(text):
        raise FrameHeaderError(f"header {header.value!r} is not a decimal integer: {text[:32]!r}")
    value = int(text)
    if not minimum <= value <= INT64_MAX:
        raise FrameHeaderError(f"header {header.value!r} must be in [{minimum}, 2^63-1], got {value}")
    return value
