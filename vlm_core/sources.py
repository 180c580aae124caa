"""Camera sources. Each yields BGR ``uint8`` frames; OpenCV reads the real ones.

URIs: a video file path (or ``file://``), ``rtsp://…``, ``http(s)://…`` (MJPEG),
``device:N`` (webcam N) and ``synthetic://?seed=S&width=W&height=H&items=N`` (moving
Fashion-MNIST scene).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import numpy as np

from vlm_core.errors import ConfigError


class SourceKind(str, enum.Enum):
    FILE = "file"
    RTSP = "rtsp"
    HTTP = "http"
    DEVICE = "device"
    SYNTHETIC = "synthetic"


@dataclass(frozen=True)
class SourceSpec:
    uri: str
    kind: SourceKind
    target: str | int
    params: dict[str, str]

    @property
    def live(self) -> bool:
        return self.kind is not SourceKind.FILE

    @classmethod
    def parse(cls, uri: str) -> SourceSpec:
        if not uri:
            raise ConfigError("empty source URI", hint="use a file path, rtsp://, http://, device:N or synthetic://")
        if uri.startswith("synthetic://"):
            query = urlparse(uri).query
            params = {k: v[-1] for k, v in parse_qs(query).items()}
            return cls(uri, SourceKind.SYNTHETIC, "", params)
        if uri.startswith("device:"):
            index = uri.split(":", 1)[1]
            if not index.isdigit():
                raise ConfigError(f"bad device source {uri!r}", hint="use device:N, e.g. device:0")
            return cls(uri, SourceKind.DEVICE, int(index), {})
        if uri.startswith("rtsp://") or uri.startswith("rtsps://"):
            return cls(uri, SourceKind.RTSP, uri, {})
        if uri.startswith("http://") or uri.startswith("https://"):
            return cls(uri, SourceKind.HTTP, uri, {})
        path = uri[len("file://") :] if uri.startswith("file://") else uri
        if "://" in path:
            raise ConfigError(
                f"unsupported source scheme in {uri!r}",
                hint="use a file path, rtsp://, http(s)://, device:N or synthetic://",
            )
        if not Path(path).is_file():
            raise ConfigError(f"video file {path!r} does not exist")
        return cls(uri, SourceKind.FILE, path, {})


class Source:
    """A camera. ``read()`` returns the next frame, or None when the stream ended or broke."""

    def __init__(self, spec: SourceSpec, *, loop: bool = False) -> None:
        self.spec = spec
        self.loop = loop

    def open(self) -> None: ...

    def read(self) -> np.ndarray | None:
        raise NotImplementedError

    def close(self) -> None: ...

    @property
    def native_fps(self) -> float | None:
        return None


class OpenCVSource(Source):
    def __init__(self, spec: SourceSpec, *, loop: bool = False) -> None:
        super().__init__(spec, loop=loop)
        self._cap = None

    def open(self) -> None:
        import cv2

        self._cap = cv2.VideoCapture(self.spec.target)
        if not self._cap.isOpened():
            self._cap.release()
            self._cap = None
            raise OSError(f"OpenCV cannot open {self.spec.uri}")

    @property
    def native_fps(self) -> float | None:
        import cv2

        fps = self._cap.get(cv2.CAP_PROP_FPS) if self._cap is not None else 0.0
        return fps if fps and fps > 0 else None

    def read(self) -> np.ndarray | None:
        if self._cap is None:
            return None
        ok, image = self._cap.read()
        if not ok and self.loop and self.spec.kind is SourceKind.FILE:
            import cv2

            self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, image = self._cap.read()
        return image if ok else None

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class SyntheticSource(Source):
    def __init__(self, spec: SourceSpec, *, loop: bool = True) -> None:
        super().__init__(spec, loop=loop)
        self._video = None

    def open(self) -> None:
        from vlm_core.datasets.scenes import SceneConfig, SceneVideo

        p = self.spec.params
        try:
            config = SceneConfig(
                width=int(p.get("width", 320)),
                height=int(p.get("height", 240)),
                min_items=int(p.get("min_items", p.get("items", 2))),
                max_items=int(p.get("items", 4)),
            )
            seed = int(p.get("seed", 0))
        except ValueError as exc:
            raise ConfigError(f"bad synthetic source parameter in {self.spec.uri!r}: {exc}") from None
        self._video = SceneVideo(config, seed=seed)

    @property
    def native_fps(self) -> float | None:
        return float(self.spec.params.get("fps", 15))

    def read(self) -> np.ndarray | None:
        return self._video.next().image if self._video is not None else None


def open_source(uri: str, *, loop: bool = False) -> Source:
    spec = SourceSpec.parse(uri)
    source: Source = SyntheticSource(spec) if spec.kind is SourceKind.SYNTHETIC else OpenCVSource(spec, loop=loop)
    return source


def sample_video_path() -> Path | None:
    """OpenCV's sample ``vtest.avi`` (Debian opencv-doc), if installed."""
    for candidate in (
        Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi"),
        Path("/usr/share/opencv4/samples/data/vtest.avi"),
    ):
        if candidate.is_file():
            return candidate
    return None
