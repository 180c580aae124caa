"""The tasks the system serves: every contract names one."""

from __future__ import annotations

import enum


class Task(str, enum.Enum):
    CLASSIFICATION = "classification"
    DETECTION = "detection"
    SEGMENTATION = "segmentation"
