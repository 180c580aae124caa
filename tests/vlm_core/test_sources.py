from __future__ import annotations

import numpy as np
import pytest

from vlm_core.errors import ConfigError
from vlm_core.sources import SourceKind, SourceSpec, open_source, sample_video_path


@pytest.mark.parametrize(
    ("uri", "kind", "live"),
    [
        ("rtsp://user:pw@camera.example/stream", SourceKind.RTSP, True),
        ("http://camera.example/mjpeg", SourceKind.HTTP, True),
        ("device:0", SourceKind.DEVICE, True),
        ("synthetic://?seed=3&items=2", SourceKind.SYNTHETIC, True),
    ],
)
def test_parse(uri: str, kind: SourceKind, live: bool) -> None:
    spec = SourceSpec.parse(uri)
    assert spec.kind is kind and spec.live is live


@pytest.mark.parametrize("uri", ["", "device:x", "ftp://host/video", "/no/such/video.avi"])
def test_bad_uris(uri: str) -> None:
    with pytest.raises(ConfigError):
        SourceSpec.parse(uri)


def test_synthetic_source_moves_and_is_deterministic() -> None:
    a, b = (
        open_source("synthetic://?seed=5&width=160&height=120"),
        open_source("synthetic://?seed=5&width=160&height=120"),
    )
    a.open()
    b.open()
    first = a.read()
    assert first is not None and first.shape == (120, 160, 3)
    assert np.array_equal(first, b.read())
    later = [a.read() for _ in range(5)][-1]
    assert later is not None and not np.array_equal(first, later)


def test_file_source_reads_sample_video() -> None:
    path = sample_video_path()
    assert path is not None, "Debian opencv-doc (vtest.avi) must be installed by the bootstrap"
    src = open_source(str(path))
    src.open()
    frame = src.read()
    src.close()
    assert frame is not None and frame.shape == (576, 768, 3)


def test_a_synthetic_camera_knows_each_frame_s_truth_and_drifts_when_told() -> None:
    source = open_source("synthetic://?seed=2&items=3&min_items=3&drift=clutter&drift_after=3")
    source.open()
    assert source.on_demand and source.truth() is None  # nothing rendered yet
    domains = []
    for _ in range(5):
        image = source.read()
        truth = source.truth()
        assert image is not None and truth is not None
        domains.append(truth.domain)
        height, width = image.shape[:2]
        assert all(0 <= o.box[0] < o.box[2] <= width and 0 <= o.box[1] < o.box[3] <= height for o in truth.objects)
        assert truth.objects and all(isinstance(o.label, str) for o in truth.objects)
    assert domains == ["base", "base", "base", "clutter", "clutter"]


@pytest.mark.parametrize(
    "uri",
    ["synthetic://?drift=sepia", "synthetic://?style=", "synthetic://?drift_after=-1", "synthetic://?turnover=x"],
)
def test_bad_drift_parameters_are_config_errors(uri: str) -> None:
    with pytest.raises(ConfigError):
        SourceSpec.parse(uri)
