"""A corpus of malformed frames in the documented envelope, built by hand (cv2 and raw
headers, never the project's ``Frame`` class), as an outside producer would send them.

Each case names the outcome the processor must give it: ``RESULT``, or the DLQ reason.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import cv2
import numpy as np

RESULT = "result"
SCHEMA = b"vlm.frame/v1"
HOUR_MS = 3_600_000


@dataclass(frozen=True)
class Case:
    name: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]] | None
    expected: str  # RESULT or a DLQ reason

    @property
    def camera_id(self) -> str | None:
        for name, value in self.headers or []:
            if name == "vlm-camera-id":
                return value.decode("utf-8", "replace")
        return None


def jpeg(width: int = 80, height: int = 64, seed: int = 0) -> bytes:
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([(x * 3 + seed) % 256, y * 4 % 256, (x + y) % 256], axis=-1).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 85])
    assert ok
    return buf.tobytes()


def png(width: int = 80, height: int = 64) -> bytes:
    ok, buf = cv2.imencode(".png", np.full((height, width, 3), 90, np.uint8))
    assert ok
    return buf.tobytes()


def bomb_png(width: int = 20_000, height: int = 20_000) -> bytes:
    """A valid greyscale PNG of ``width`` x ``height`` black pixels, compressed to a few
    hundred KB: decoding it as BGR would need width*height*3 bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    compressor = zlib.compressobj(9)
    row = b"\x00" * (width + 1)  # filter byte + pixels
    rows_per_chunk = max(1, (8 << 20) // len(row))
    block = row * rows_per_chunk
    parts = []
    for start in range(0, height, rows_per_chunk):
        n = min(rows_per_chunk, height - start)
        parts.append(compressor.compress(block if n == rows_per_chunk else row * n))
    parts.append(compressor.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")


def headers(
    camera: str,
    seq: int | str,
    *,
    ts: int | str | None,
    width: int = 80,
    height: int = 64,
    encoding: str = "jpeg",
    schema: bytes = SCHEMA,
) -> list[tuple[str, bytes]]:
    table = [
        ("vlm-schema", schema),
        ("vlm-camera-id", camera.encode()),
        ("vlm-seq", str(seq).encode()),
        ("vlm-capture-ts-ms", str(ts).encode() if ts is not None else None),
        ("vlm-width", str(width).encode()),
        ("vlm-height", str(height).encode()),
        ("vlm-encoding", encoding.encode()),
    ]
    return [(k, v) for k, v in table if v is not None]


def malformed(now_ms: int, bomb: bytes | None = None) -> list[Case]:
    """The corpus. ``bomb`` is :func:`bomb_png` (slow to build: pass it in to reuse it)."""
    good = jpeg()
    uni = "камера-1 📷"
    long_ok = "c" * 128
    long_bad = "c" * 129
    trailer = good + b"\x00\x00CAMERA-TRAILER\xff\xd9 vendor data" + bytes(range(256))
    # An EXIF-like APP1 segment carrying its own end marker (a thumbnail) before the scan.
    app1 = b"\xff\xe1" + struct.pack(">H", 2 + 12) + b"Exif\x00\x00\xff\xd8\xff\xd9\x00\x00"
    with_thumbnail_cut = (good[:2] + app1 + good[2:])[: len(good) // 2]
    return [
        Case("unicode camera id", uni.encode(), good, headers(uni, 1, ts=now_ms), RESULT),
        Case("128-character id", long_ok.encode(), good, headers(long_ok, 2, ts=now_ms), RESULT),
        Case("129-character id", long_bad.encode(), good, headers(long_bad, 3, ts=now_ms), "bad_header"),
        Case("png bytes labelled jpeg", b"c-png", png(), headers("c-png", 4, ts=now_ms), "undecodable"),
        Case(
            "random bytes",
            b"c-rand",
            np.random.default_rng(7).bytes(3000),
            headers("c-rand", 5, ts=now_ms),
            "undecodable",
        ),
        Case(
            "jpeg whose headers say 1x1",
            b"c-1x1",
            good,
            headers("c-1x1", 6, ts=now_ms, width=1, height=1),
            "dimension_mismatch",
        ),
        Case(
            "headers claim 20000x20000",
            b"c-huge",
            good,
            headers("c-huge", 7, ts=now_ms, width=20_000, height=20_000),
            "too_large",
        ),
        Case("seq 2^63", b"c-seq", good, headers("c-seq", 2**63, ts=now_ms), "bad_header"),
        Case("seq 2^63-1", b"c-seqmax", good, headers("c-seqmax", 2**63 - 1, ts=now_ms), RESULT),
        Case("seq -1", b"c-neg", good, headers("c-neg", -1, ts=now_ms), "bad_header"),
        Case("non-numeric seq", b"c-nan", good, headers("c-nan", "12a", ts=now_ms), "bad_header"),
        Case("missing capture time", b"c-nots", good, headers("c-nots", 8, ts=None), "bad_header"),
        Case(
            "capture time far in the future",
            b"c-future",
            good,
            headers("c-future", 9, ts=now_ms + 10 * 365 * 24 * HOUR_MS),
            "bad_timestamp",
        ),
        Case(
            "capture time a minute ahead (clock skew)",
            b"c-skew",
            good,
            headers("c-skew", 10, ts=now_ms + 60_000),
            RESULT,
        ),
        Case("empty value and no headers", b"c-empty", b"", None, "bad_header"),
        Case("null key", None, good, headers("c-nullkey", 11, ts=now_ms), RESULT),
        Case(
            "unknown schema version",
            b"c-schema",
            good,
            headers("c-schema", 12, ts=now_ms, schema=b"vlm.frame/v9"),
            "bad_header",
        ),
        Case("truncated jpeg", b"c-trunc", good[: len(good) // 2], headers("c-trunc", 13, ts=now_ms), "undecodable"),
        Case(
            "truncated jpeg with a thumbnail end marker",
            b"c-thumb",
            with_thumbnail_cut,
            headers("c-thumb", 14, ts=now_ms),
            "undecodable",
        ),
        Case(
            "jpeg with bytes after its end marker", b"c-trailer", trailer, headers("c-trailer", 15, ts=now_ms), RESULT
        ),
        Case("key differs from the camera header", b"other", good, headers("c-key", 16, ts=now_ms), "bad_header"),
        Case(
            "decompression bomb png claiming 640x480",
            b"c-bomb",
            bomb or bomb_png(),
            headers("c-bomb", 17, ts=now_ms, width=640, height=480, encoding="png"),
            "too_large",
        ),
    ]
