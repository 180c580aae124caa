from __future__ import annotations

import cv2
import numpy as np
import pytest

from tests.conftest import random_image
from vlm_core.contracts.frame import (
    FRAME_SCHEMA_VERSION,
    Encoding,
    Frame,
    FrameLimits,
    Header,
    decode_all,
    decode_batch,
    jpeg_scale,
)
from vlm_core.errors import (
    FrameDecodeError,
    FrameDimensionMismatchError,
    FrameError,
    FrameHeaderError,
    FrameTooLargeError,
    UnsupportedEncodingError,
)


def smooth_image(height: int = 60, width: int = 80) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 3 % 256, y * 4 % 256, (x + y) % 256], axis=-1).astype(np.uint8)


def roundtrip(frame: Frame, **kwargs: object) -> Frame:
    rec = frame.to_kafka()
    return Frame.from_kafka(rec.key, rec.value, rec.headers, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("encoding", list(Encoding))
def test_roundtrip_each_encoding(encoding: Encoding) -> None:
    image = smooth_image()
    frame = Frame.from_image(image, camera_id="cam-1", seq=7, capture_ts_ms=123, encoding=encoding)
    back = roundtrip(frame)
    assert back == frame
    decoded = back.decode()
    assert decoded.shape == image.shape
    if encoding is Encoding.JPEG:
        assert np.abs(decoded.astype(int) - image.astype(int)).mean() < 6
    else:
        assert np.array_equal(decoded, image)


def test_kafka_record_layout() -> None:
    frame = Frame.from_image(smooth_image(), camera_id="lobby", seq=3, capture_ts_ms=99)
    rec = frame.to_kafka()
    headers = dict(rec.headers)
    assert rec.key == b"lobby"
    assert rec.value.startswith(b"\xff\xd8")  # raw JPEG bytes, not base64
    assert headers[Header.SCHEMA.value] == FRAME_SCHEMA_VERSION.encode()
    assert headers[Header.SEQ.value] == b"3"
    assert headers[Header.WIDTH.value] == b"80" and headers[Header.HEIGHT.value] == b"60"


@pytest.mark.parametrize("missing", list(Header))
def test_missing_header(missing: Header) -> None:
    rec = Frame.from_image(smooth_image(), camera_id="c", seq=0).to_kafka()
    headers = [(k, v) for k, v in rec.headers if k != missing.value]
    with pytest.raises(FrameHeaderError, match=missing.value if missing is not Header.SCHEMA else "schema"):
        Frame.from_kafka(rec.key, rec.value, headers)


@pytest.mark.parametrize(
    ("header", "value"),
    [
        (Header.SEQ, b"seven"),
        (Header.SEQ, b"-1"),
        (Header.WIDTH, b"0"),
        (Header.CAPTURE_TS_MS, b"\xff\xfe"),
        (Header.SCHEMA, b"vlm.frame/v0"),
        (Header.CAMERA_ID, b""),
    ],
)
def test_garbled_header(header: Header, value: bytes) -> None:
    rec = Frame.from_image(smooth_image(), camera_id="c", seq=0).to_kafka()
    headers = [(k, value if k == header.value else v) for k, v in rec.headers]
    with pytest.raises(FrameHeaderError):
        Frame.from_kafka(None, rec.value, headers)


def test_key_must_match_camera_header() -> None:
    rec = Frame.from_image(smooth_image(), camera_id="a", seq=0).to_kafka()
    with pytest.raises(FrameHeaderError, match="differs"):
        Frame.from_kafka(b"b", rec.value, rec.headers)


def test_no_headers_at_all() -> None:
    with pytest.raises(FrameHeaderError):
        Frame.from_kafka(b"a", b"\xff\xd8\xff", None)


def test_unsupported_encoding() -> None:
    rec = Frame.from_image(smooth_image(), camera_id="c", seq=0).to_kafka()
    headers = [(k, b"webp" if k == Header.ENCODING.value else v) for k, v in rec.headers]
    with pytest.raises(UnsupportedEncodingError, match="webp"):
        Frame.from_kafka(rec.key, rec.value, headers)


def test_zero_bytes_is_undecodable() -> None:
    rec = Frame.from_image(smooth_image(), camera_id="c", seq=0).to_kafka()
    with pytest.raises(FrameDecodeError):
        Frame.from_kafka(rec.key, b"", rec.headers)


def test_truncated_jpeg() -> None:
    frame = Frame.from_image(smooth_image(), camera_id="c", seq=0)
    cut = Frame(**{**frame.__dict__, "data": frame.data[: len(frame.data) // 2]})
    with pytest.raises(FrameDecodeError, match="truncated"):
        cut.decode()


def test_not_an_image() -> None:
    frame = Frame.from_image(smooth_image(), camera_id="c", seq=0)
    text = Frame(**{**frame.__dict__, "data": b"hello, I am not a JPEG" * 10})
    with pytest.raises(FrameDecodeError, match="magic"):
        text.decode()


def test_corrupt_png_body() -> None:
    frame = Frame.from_image(smooth_image(), camera_id="c", seq=0, encoding=Encoding.PNG)
    broken = Frame(**{**frame.__dict__, "data": frame.data[:16] + b"\x00" * 40})
    with pytest.raises(FrameDecodeError):
        broken.decode()


def test_byte_limit() -> None:
    rec = Frame.from_image(smooth_image(), camera_id="c", seq=0).to_kafka()
    with pytest.raises(FrameTooLargeError, match="bytes"):
        Frame.from_kafka(rec.key, rec.value, rec.headers, limits=FrameLimits(max_bytes=100))


def test_pixel_limit() -> None:
    rec = Frame.from_image(smooth_image(), camera_id="c", seq=0).to_kafka()
    with pytest.raises(FrameTooLargeError, match="pixels"):
        Frame.from_kafka(rec.key, rec.value, rec.headers, limits=FrameLimits(max_pixels=60 * 80 - 1))


def test_dimension_mismatch() -> None:
    frame = Frame.from_image(smooth_image(), camera_id="c", seq=0)
    liar = Frame(**{**frame.__dict__, "width": 81})
    with pytest.raises(FrameDimensionMismatchError, match="81x60"):
        liar.decode()


def test_raw_size_mismatch() -> None:
    frame = Frame.from_image(smooth_image(), camera_id="c", seq=0, encoding=Encoding.RAW)
    short = Frame(**{**frame.__dict__, "data": frame.data[:-3]})
    with pytest.raises(FrameDimensionMismatchError):
        short.decode()


def test_every_frame_error_has_a_distinct_reason() -> None:
    classes = [
        FrameHeaderError,
        UnsupportedEncodingError,
        FrameDecodeError,
        FrameTooLargeError,
        FrameDimensionMismatchError,
    ]
    assert all(issubclass(c, FrameError) for c in classes)
    assert len({c.reason for c in classes}) == len(classes)


def test_decode_batch_keeps_good_frames(rng: np.random.Generator) -> None:
    good = [Frame.from_image(random_image(rng, 30 + i, 40), camera_id="c", seq=i) for i in range(3)]
    bad = Frame(**{**good[0].__dict__, "data": b"junk", "seq": 99})
    images, ok, failures = decode_batch([good[0], bad, good[1], good[2]])
    assert ok == [0, 2, 3]
    assert [img.shape[0] for img in images] == [30, 31, 32]
    assert len(failures) == 1 and failures[0].index == 1
    assert isinstance(failures[0].error, FrameDecodeError)
    with pytest.raises(FrameDecodeError):
        decode_all([good[0], bad])


def test_from_image_rejects_wrong_shape() -> None:
    with pytest.raises(FrameError):
        Frame.from_image(np.zeros((10, 10), np.uint8), camera_id="c", seq=0)


def test_jpeg_quality_changes_size() -> None:
    image = cv2.GaussianBlur(np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8), (3, 3), 0)
    low = Frame.from_image(image, camera_id="c", seq=0, jpeg_quality=20)
    high = Frame.from_image(image, camera_id="c", seq=0, jpeg_quality=95)
    assert len(low.data) < len(high.data)


# -- the malformed-frame corpus, and the contract's edges --------------------------------
from tests.frame_corpus import RESULT, bomb_png, malformed  # noqa: E402

NOW_MS = 1_750_000_000_000


@pytest.fixture(scope="module")
def corpus_cases() -> list:  # type: ignore[type-arg]
    return malformed(NOW_MS, bomb=bomb_png())


def _outcome(case) -> str:  # type: ignore[no-untyped-def]
    try:
        Frame.from_kafka(case.key, case.value, case.headers, now_ms=NOW_MS).decode()
    except FrameError as exc:
        return exc.reason
    return RESULT


def test_every_corpus_case_gets_its_expected_outcome(corpus_cases: list) -> None:  # type: ignore[type-arg]
    outcomes = {case.name: _outcome(case) for case in corpus_cases}
    assert outcomes == {case.name: case.expected for case in corpus_cases}


def test_seq_is_capped_at_int64() -> None:
    frame = Frame.from_image(smooth_image(), camera_id="c", seq=2**63 - 1)
    assert roundtrip(frame).seq == 2**63 - 1
    with pytest.raises(FrameHeaderError, match="2\\^63-1"):
        roundtrip(Frame(**{**frame.__dict__, "seq": 2**63}))


@pytest.mark.parametrize("text", [b"1_000", b" 7", b"+7", "٣".encode(), b"0x10", b""])
def test_integers_are_plain_ascii_decimals(text: bytes) -> None:
    rec = Frame.from_image(smooth_image(), camera_id="c", seq=1).to_kafka()
    headers = [(k, text if k == Header.SEQ.value else v) for k, v in rec.headers]
    with pytest.raises(FrameHeaderError, match="decimal integer"):
        Frame.from_kafka(rec.key, rec.value, headers)


def test_jpeg_trailer_decodes_like_opencv() -> None:
    frame = Frame.from_image(smooth_image(), camera_id="c", seq=0)
    with_trailer = Frame(**{**frame.__dict__, "data": frame.data + b"\xff\xd9trailer\x00\x01"})
    expected = cv2.imdecode(np.frombuffer(with_trailer.data, np.uint8), cv2.IMREAD_COLOR)
    assert np.array_equal(with_trailer.decode(), expected)


def test_progressive_jpeg_is_read_to_its_end_marker() -> None:
    ok, buf = cv2.imencode(".jpg", smooth_image(), [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    assert ok
    data = buf.tobytes()
    frame = Frame("c", 0, 0, 80, 60, Encoding.JPEG, data)
    assert frame.decode().shape == (60, 80, 3)
    with pytest.raises(FrameDecodeError, match="truncated"):
        Frame("c", 0, 0, 80, 60, Encoding.JPEG, data[: len(data) * 2 // 3]).decode()


def test_sizes_are_read_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    from vlm_core.contracts import frame as frame_module

    def no_decode(*_args: object) -> None:
        raise AssertionError("decoded pixels of a frame that its own header rejects")

    monkeypatch.setattr(frame_module.cv2, "imdecode", no_decode)
    bomb = Frame("c", 0, 0, 640, 480, Encoding.PNG, bomb_png())
    with pytest.raises(FrameTooLargeError, match="encoded image is 20000x20000"):
        bomb.decode()
    small_liar = Frame("c", 0, 0, 640, 480, Encoding.PNG, bomb_png(700, 500))
    with pytest.raises(FrameDimensionMismatchError, match="700x500"):
        small_liar.decode()
    jpeg = Frame.from_image(smooth_image(), camera_id="c", seq=0)
    with pytest.raises(FrameDimensionMismatchError, match="80x60"):
        Frame(**{**jpeg.__dict__, "width": 1, "height": 1}).decode()


def test_future_capture_times_are_refused_beyond_the_skew_limit() -> None:
    from vlm_core.errors import FrameTimestampError

    frame = Frame.from_image(smooth_image(), camera_id="c", seq=0, capture_ts_ms=NOW_MS + 3_600_000)
    assert roundtrip(frame, now_ms=NOW_MS).capture_ts_ms == NOW_MS + 3_600_000
    with pytest.raises(FrameTimestampError, match="ahead"):
        roundtrip(frame, now_ms=NOW_MS, limits=FrameLimits(max_future_ms=60_000))


@pytest.mark.parametrize(
    ("camera_id", "ok"),
    [
        ("камера-1 📷", True),
        ("a b", True),
        ("c" * 128, True),
        ("c" * 129, False),
        ("tab\there", False),
        ("zw\u200bj", False),
        ("", False),
        ("new\nline", False),
    ],
)
def test_accepted_camera_ids(camera_id: str, ok: bool) -> None:
    frame = Frame.from_image(smooth_image(), camera_id=camera_id or "x", seq=0)
    frame = Frame(**{**frame.__dict__, "camera_id": camera_id})
    if ok:
        assert roundtrip(frame).camera_id == camera_id
    else:
        with pytest.raises(FrameHeaderError, match="camera id"):
            roundtrip(frame)


def test_decompression_bomb_leaves_memory_alone(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Peak RSS of a fresh interpreter that rejects the bomb rises by < 100 MB (a full
    decode of 20000x20000 BGR would take 1.2 GB)."""
    import subprocess
    import sys

    (tmp_path / "bomb.png").write_bytes(bomb_png())
    script = f"""
import resource, sys
from vlm_core.errors import FrameError
from vlm_core.contracts.frame import Encoding, Frame
data = open({str(tmp_path / "bomb.png")!r}, "rb").read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    Frame("c", 0, 0, 640, 480, Encoding.PNG, data).decode()
except FrameError as exc:
    reason = exc.reason
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(reason, (after - before) / 1024)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    reason, rise_mb = out.stdout.split()
    print(f"peak RSS rise rejecting the bomb: {float(rise_mb):.1f} MB")
    assert reason == "too_large"
    assert float(rise_mb) < 100


@pytest.mark.parametrize("scale", [1, 2, 4, 8])
def test_a_checked_jpeg_decodes_at_a_fraction_of_its_size(scale: int) -> None:
    y, x = np.mgrid[0:121, 0:203]  # odd sides: libjpeg rounds the scaled size up
    image = np.stack([x * 255 // 203, y * 255 // 121, (x + y) * 255 // 324], axis=-1).astype(np.uint8)
    frame = roundtrip(Frame.from_image(image, camera_id="cam", seq=0))
    frame.check()
    pixels = frame.pixels(scale)
    assert pixels.shape == (-(-121 // scale), -(-203 // scale), 3)
    full = cv2.resize(frame.pixels(), (pixels.shape[1], pixels.shape[0]), interpolation=cv2.INTER_AREA)
    assert np.abs(full.astype(int) - pixels).mean() < 8  # the same picture, smaller


def test_scales_apply_to_jpeg_only_and_are_checked() -> None:
    png = roundtrip(Frame.from_image(smooth_image(), camera_id="cam", seq=0, encoding=Encoding.PNG))
    assert png.pixels(4).shape == (60, 80, 3)
    with pytest.raises(ValueError, match="scale must be one of"):
        png.pixels(3)


@pytest.mark.parametrize(
    ("width", "height", "short_side", "scale"),
    [
        (1280, 720, 256, 2),
        (1920, 1080, 256, 4),
        (320, 240, 256, 1),
        (3840, 2160, 256, 8),
        (1280, 720, None, 1),
        (1280, 720, 320, 2),
        (640, 360, 320, 1),
    ],
)
def test_the_jpeg_scale_keeps_the_shorter_side_the_model_needs(
    width: int, height: int, short_side: int | None, scale: int
) -> None:
    assert jpeg_scale(width, height, short_side) == scale
