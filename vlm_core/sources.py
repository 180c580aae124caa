"""Camera sources. Each yields BGR ``uint8`` frames; OpenCV reads the real ones.

URIs: a video file path (or ``file://``), ``rtsp://…``, ``http(s)://…`` (MJPEG),
``device:N`` (webcam N) and ``synthetic://?seed=S&width=W&height=H&items=N`` (moving
Fashion-MNIST scene). A synthetic camera knows the truth of every frame it renders
(:meth:`Source.truth`); ``style=`` picks how its scenes look, ``drift=STYLE&drift_after=N``
changes the look after N frames and ``turnover=K`` brings in a new item every K frames.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import numpy as np

from vlm_core.contracts.truth import FrameTruth, TruthObject
from vlm_core.errors import ConfigError, SourceError


class SourceFailure(str, enum.Enum):
    """Why a camera is down: a bounded set, so it can be a metric label."""

    #: The source could not be opened (network, a busy camera): retried with backoff.
    OPEN_FAILED = "open_failed"
    #: A live stream stopped delivering frames: reopened with backoff.
    STREAM_LOST = "stream_lost"
    #: A file that OpenCV cannot read as a video: permanent.
    NOT_A_VIDEO = "not_a_video"
    #: The URI's parameters are wrong: permanent.
    BAD_CONFIG = "bad_config"


_SYNTHETIC_INT_PARAMS = ("seed", "width", "height", "items", "min_items", "drift_after", "turnover")
#: Parameters naming a :class:`vlm_core.datasets.scenes.SceneStyle`.
_SYNTHETIC_STYLES = ("style", "drift")
SCENE_STYLE_NAMES = ("base", "negative", "small", "clutter")
#: 0/1 switches of :class:`vlm_core.datasets.scenes.SceneMotion`: items that cross and
#: occlude each other, that leave the frame and come back, that stop, speed up and turn.
_SYNTHETIC_FLAGS = ("crossings", "exits", "maneuvers")


def _synthetic_params(uri: str) -> dict[str, str]:
    params = {k: v[-1] for k, v in parse_qs(urlparse(uri).query, keep_blank_values=True).items()}
    known = (*_SYNTHETIC_INT_PARAMS, *_SYNTHETIC_FLAGS, *_SYNTHETIC_STYLES, "fps")
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ConfigError(
            f"unknown synthetic source parameter(s) {', '.join(unknown)} in {uri!r}", hint=f"use {', '.join(known)}"
        )
    for name, value in params.items():
        if name in _SYNTHETIC_STYLES:
            if value not in SCENE_STYLE_NAMES:
                raise ConfigError(
                    f"synthetic source parameter {name}={value!r} in {uri!r} is not a scene style",
                    hint=f"use one of {', '.join(SCENE_STYLE_NAMES)}",
                )
            continue
        if name in _SYNTHETIC_FLAGS:
            if value not in ("0", "1"):
                raise ConfigError(f"synthetic source parameter {name}={value!r} in {uri!r} must be 0 or 1")
            continue
        try:
            number = float(value) if name == "fps" else int(value)
        except ValueError:
            kind = "a number" if name == "fps" else "an integer"
            raise ConfigError(f"synthetic source parameter {name}={value!r} in {uri!r} is not {kind}") from None
        if number < 0 or (number == 0 and name not in ("seed", "drift_after", "turnover")):
            raise ConfigError(f"synthetic source parameter {name}={value!r} in {uri!r} must be positive")
    return params


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

    @property
    def on_demand(self) -> bool:
        """Whether a frame is made when asked for (a file, a generator), so the reader paces
        it, rather than delivered at the camera's own rate: a reader that waits loses none."""
        return self.kind in (SourceKind.FILE, SourceKind.SYNTHETIC)

    @classmethod
    def parse(cls, uri: str) -> SourceSpec:
        if not uri:
            raise ConfigError("empty source URI", hint="use a file path, rtsp://, http://, device:N or synthetic://")
        if uri.startswith("synthetic://"):
            return cls(uri, SourceKind.SYNTHETIC, "", _synthetic_params(uri))
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

    def truth(self) -> FrameTruth | None:
        """The ground truth of the frame :meth:`read` returned last; None for real cameras."""
        return None

    @property
    def on_demand(self) -> bool:
        """Whether a frame is made when asked for (:attr:`SourceSpec.on_demand`)."""
        return self.spec.on_demand

    def close(self) -> None: ...

    @property
    def native_fps(self) -> float | None:
        return None


class OpenCVSource(Source):
    def __init__(self, spec: SourceSpec, *, loop: bool = False) -> None:
        super().__init__(spec, loop=loop)
        self._cap: Any = None  # cv2.VideoCapture while open

    def open(self) -> None:
        import cv2

        self._cap = cv2.VideoCapture(self.spec.target)
        if not self._cap.isOpened():
            self._cap.release()
            self._cap = None
            if self.spec.kind is SourceKind.FILE:
                raise SourceError(
                    f"OpenCV cannot read {self.spec.uri} as a video",
                    permanent=True,
                    reason=SourceFailure.NOT_A_VIDEO.value,
                    hint="give a video file OpenCV can play (e.g. .mp4, .avi), an rtsp:// or http:// stream",
                )
            raise SourceError(
                f"OpenCV cannot open {self.spec.uri}", permanent=False, reason=SourceFailure.OPEN_FAILED.value
            )

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
        self._video: Any = None  # a SceneVideo while open

    def open(self) -> None:
        from vlm_core.datasets.scenes import SceneConfig, SceneMotion, SceneStyle, SceneVideo

        p = self.spec.params  # validated by SourceSpec.parse
        try:
            config = SceneConfig(
                width=int(p.get("width", 320)),
                height=int(p.get("height", 240)),
                min_items=int(p.get("min_items", p.get("items", 2))),
                max_items=int(p.get("items", 4)),
                style=SceneStyle(p.get("style", "base")),
            )
        except ValueError as exc:
            raise ConfigError(f"bad synthetic source parameters in {self.spec.uri!r}: {exc}") from None
        motion = SceneMotion(
            bounce=p.get("exits", "0") == "0",
            crossings=p.get("crossings", "0") == "1",
            maneuvers=p.get("maneuvers", "0") == "1",
            turnover=int(p.get("turnover", 0)),
        )
        drift = SceneStyle(p["drift"]) if "drift" in p else None
        self._video = SceneVideo(
            config, seed=int(p.get("seed", 0)), motion=motion, drift=drift, drift_after=int(p.get("drift_after", 0))
        )

    @property
    def native_fps(self) -> float | None:
        return float(self.spec.params.get("fps", 15))

    def read(self) -> np.ndarray | None:
        return self._video.next().image if self._video is not None else None

    def truth(self) -> FrameTruth | None:
        from vlm_core.datasets.scenes import MIN_LABELED_VISIBILITY, SCENE_CLASSES

        if self._video is None or self._video.t == 0:
            return None
        objects = tuple(
            TruthObject(item.box, SCENE_CLASSES[item.label])
            for item in self._video.truth
            if item.visibility >= MIN_LABELED_VISIBILITY
        )
        return FrameTruth(self._video.frame_style.value, objects)


def probe_file(spec: SourceSpec) -> None:
    """Fail now, with one clear error, when a file source is not a readable video."""
    if spec.kind is not SourceKind.FILE:
        return
    source = OpenCVSource(spec)
    source.open()
    try:
        if source.read() is None:
            raise SourceError(
                f"{spec.uri} has no video frame OpenCV can read",
                permanent=True,
                reason=SourceFailure.NOT_A_VIDEO.value,
            )
    finally:
        source.close()


def failure_of(exc: BaseException) -> tuple[SourceFailure, bool]:
    """(why the camera is down, whether the error is permanent) for an error opening a source.
    Unknown errors are taken as transient: a camera that may come back is retried."""
    if isinstance(exc, ConfigError):
        return SourceFailure.BAD_CONFIG, True
    if isinstance(exc, SourceError):
        return SourceFailure(exc.reason), exc.permanent
    return SourceFailure.OPEN_FAILED, False


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
