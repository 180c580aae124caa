"""A labeled image: what every dataset reader, the scene generator and a labels record yield."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: Mask value of pixels no class claims (VOC's object borders, a labeller's "don't care"):
#: losses and metrics skip them.
MASK_IGNORE = 255


@dataclass(frozen=True)
class Sample:
    """One labeled image. Fields a task does not use stay empty.

    ``boxes`` are ``[x1, y1, x2, y2]`` pixels; ``box_labels`` index ``class_names`` of the
    dataset (detection class names exclude background). ``mask`` is a class-index map
    where 0 is background, ``k`` is ``class_names[k]`` of the segmentation classes and
    :data:`MASK_IGNORE` is no class.
    """

    image: np.ndarray = field(repr=False)
    label: int | None = None
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32), repr=False)
    box_labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64), repr=False)
    mask: np.ndarray | None = field(default=None, repr=False)
    instance_masks: np.ndarray | None = field(default=None, repr=False)
    source: str = ""
    #: Per box, where known (synthetic video): the object's identity across frames, and
    #: the fraction of it that is visible.
    box_ids: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64), repr=False)
    box_visibility: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.float32), repr=False)
