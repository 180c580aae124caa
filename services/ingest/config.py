"""``sources.yaml``: many cameras for one ingest process."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, Field, ValidationError

from services.ingest.worker import CameraConfig
from vlm_core.buffering import BufferPolicy
from vlm_core.contracts.frame import Encoding
from vlm_core.errors import ConfigError, first_error


class CameraEntry(BaseModel, extra="forbid"):
    camera_id: str = Field(min_length=1, max_length=128)
    source: str = Field(min_length=1)
    #: Frames per second; 0 sends every frame unpaced.
    fps: float | None = Field(default=None, ge=0)
    max_width: int | None = Field(default=None, ge=16)
    jpeg_quality: int | None = Field(default=None, ge=1, le=100)
    encoding: Encoding | None = None
    loop: bool = False
    max_frames: int | None = Field(default=None, ge=1)
    buffer_frames: int | None = Field(default=None, ge=1, le=1_000_000)
    buffer_policy: BufferPolicy | None = None


class SourcesFile(BaseModel, extra="forbid"):
    fps: float = Field(default=10.0, ge=0)
    max_width: int = Field(default=640, ge=16)
    jpeg_quality: int = Field(default=85, ge=1, le=100)
    #: Frames each camera keeps while the broker is away, and what a full buffer does.
    buffer_frames: int = Field(default=512, ge=1, le=1_000_000)
    buffer_policy: BufferPolicy = BufferPolicy.AUTO
    cameras: list[CameraEntry] = Field(min_length=1)


def load_cameras(path: Path) -> list[CameraConfig]:
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"sources file {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    try:
        parsed = SourcesFile.model_validate(doc)
    except ValidationError as exc:
        where, problem = first_error(exc, root="")
        raise ConfigError(f"{path}: {where}: {problem}", hint="see deploy/ingest/sources.example.yaml") from None
    return [
        CameraConfig(
            camera_id=c.camera_id,
            source=c.source,
            fps=c.fps if c.fps is not None else parsed.fps,
            max_width=c.max_width or parsed.max_width,
            jpeg_quality=c.jpeg_quality or parsed.jpeg_quality,
            encoding=c.encoding or Encoding.JPEG,
            loop=c.loop,
            max_frames=c.max_frames,
            buffer_frames=c.buffer_frames or parsed.buffer_frames,
            buffer_policy=c.buffer_policy or parsed.buffer_policy,
        )
        for c in parsed.cameras
    ]
