"""Scenes composed of real Fashion-MNIST items on varied backgrounds.

Every scene comes with exact boxes, a class mask and per-item labels, so one generator
serves classification (crops), detection and segmentation, and :class:`SceneVideo` turns
it into a moving ``synthetic://`` camera. Everything is deterministic given the seed.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace

import cv2
import numpy as np

from vlm_core.contracts.sample import Sample
from vlm_core.datasets.fashion_mnist import FASHION_MNIST_CLASSES, FashionMnist, load_fashion_mnist

#: Detection class names (no background); segmentation adds "background" at index 0.
SCENE_CLASSES = FASHION_MNIST_CLASSES
SCENE_SEGMENTATION_CLASSES = ("background", *FASHION_MNIST_CLASSES)
_ITEM_THRESHOLD = 30


class SceneStyle(str, enum.Enum):
    """How scenes look. ``base`` is what the shipped models are trained on; the others are
    domain shifts that none of them has seen, for measuring a model under drift and the
    loop that repairs it (``style=`` of ``scenes://``, ``drift=`` of ``synthetic://``)."""

    BASE = "base"
    #: Items drawn as photographic negatives: the complementary colour, shading inverted.
    NEGATIVE = "negative"
    #: Items at 40% of their size: the camera moved back or zoomed out.
    SMALL = "small"
    #: Backgrounds crowded with item-sized, high-contrast shapes and lines.
    CLUTTER = "clutter"


SMALL_ITEM_SCALE = 0.4


@dataclass(frozen=True)
class SceneConfig:
    width: int = 320
    height: int = 240
    min_items: int = 1
    max_items: int = 4
    min_item_size: int = 48
    max_item_size: int = 110
    split: str = "train"
    #: Scenes as a moving camera sees them: items may overlap (the later one in front) and
    #: be cut by the frame's edge. Without it items never touch and are wholly inside.
    crowded: bool = False
    style: SceneStyle = SceneStyle.BASE

    def item_size_range(self) -> tuple[int, int]:
        """The smallest and largest item side, in pixels, in this style."""
        low, high = self.min_item_size, min(self.max_item_size, self.width, self.height)
        if self.style is SceneStyle.SMALL:
            return max(8, round(low * SMALL_ITEM_SCALE)), max(8, round(high * SMALL_ITEM_SCALE))
        return low, high


@dataclass
class _Item:
    index: int  # into the Fashion-MNIST split
    label: int
    size: int
    color: tuple[int, int, int]
    x: float
    y: float
    vx: float = 0.0
    vy: float = 0.0
    sprite: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    alpha: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    item_id: int = 0
    paused: int = 0  # frames left standing still
    out_frames: int = 0  # frames spent wholly outside the frame


class SceneGenerator:
    def __init__(self, config: SceneConfig | None = None, *, seed: int = 0, data: FashionMnist | None = None) -> None:
        self.config = config or SceneConfig()
        self.seed = seed
        self.data = data or load_fashion_mnist(self.config.split)
        self.class_names = SCENE_CLASSES

    def scene(self, index: int) -> Sample:
        """Scene number ``index``; the same (seed, index) always gives the same scene."""
        rng = np.random.default_rng([self.seed, index])
        background = make_background(rng, self.config.width, self.config.height, self.config.style)
        items = self._place_items(rng)
        sample = render(background, items, source=f"scene:{self.seed}:{index}")
        return _without_hidden(sample) if self.config.crowded else sample

    def __len__(self) -> int:  # generators are unbounded; a nominal size keeps samplers happy
        return 1_000_000

    def __getitem__(self, index: int) -> Sample:
        return self.scene(index)

    def _new_item(self, rng: np.random.Generator, size: int, x: float, y: float) -> _Item:
        index = int(rng.integers(len(self.data)))
        hue = int(rng.integers(0, 180))
        hsv = np.array([[[hue, int(rng.integers(60, 256)), int(rng.integers(140, 256))]]], np.uint8)
        color = tuple(int(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0])
        item = _Item(index, int(self.data.labels[index]), size, color, x, y)  # type: ignore[arg-type]
        _prepare_sprite(item, self.data.images[index], self.config.style)
        return item

    def _place_items(self, rng: np.random.Generator, *, crowded: bool | None = None) -> list[_Item]:
        cfg = self.config
        crowded = cfg.crowded if crowded is None else crowded
        count = int(rng.integers(cfg.min_items, cfg.max_items + 1))
        items: list[_Item] = []
        low, high = cfg.item_size_range()
        for _ in range(count):
            for _attempt in range(30):
                size = int(rng.integers(low, high + 1))
                if crowded:  # up to 60% of an item outside the frame, any overlap allowed
                    margin = int(0.6 * size)
                    x = float(rng.integers(-margin, cfg.width - size + margin + 1))
                    y = float(rng.integers(-margin, cfg.height - size + margin + 1))
                    items.append(self._new_item(rng, size, x, y))
                    break
                x = float(rng.integers(0, cfg.width - size + 1))
                y = float(rng.integers(0, cfg.height - size + 1))
                if all(not _overlaps((x, y, size), (o.x, o.y, o.size)) for o in items):
                    items.append(self._new_item(rng, size, x, y))
                    break
        return items


@dataclass(frozen=True)
class SceneMotion:
    """How a :class:`SceneVideo`'s items move. The defaults are the plain drifting scene;
    the options build the cases that break trackers, with ground truth for each."""

    #: Items bounce off the edges. When False they leave the frame sideways, stay out for
    #: ``reentry_frames`` and come back along the path they left by.
    bounce: bool = True
    reentry_frames: int = 3
    #: Pairs of items on the same row move towards each other: they cross and occlude.
    crossings: bool = False
    #: Items now and then stop for a while, change speed or turn.
    maneuvers: bool = False
    #: Chance per item and frame that a manoeuvre starts.
    maneuver_rate: float = 0.012
    #: A vertical line at this fraction of the width; :attr:`SceneVideo.line_crossings`
    #: counts the items' anchors (box bottom centre) crossing it.
    line_x: float | None = None
    #: As the pipeline's ``hysteresis_px``: a crossing counts once the anchor is this far past.
    line_hysteresis_px: float = 3.0
    min_speed: float = 1.0
    max_speed: float = 4.0
    #: Every this many frames one item (the oldest) is replaced by a new one where it
    #: stands: a camera that sees a stream of different objects. 0: the same items always.
    turnover: int = 0


@dataclass(frozen=True)
class TruthItem:
    """One item of a frame as it really is: identity, amodal box clipped to the frame, and
    the fraction of its pixels that is visible (not covered by another item, in frame)."""

    item_id: int
    label: int
    box: tuple[float, float, float, float]
    visibility: float


class SceneVideo:
    """A moving scene of real Fashion-MNIST items. Frame ``t`` is deterministic given the
    seed and the motion. :attr:`truth` is the ground truth of the frame just returned."""

    def __init__(
        self,
        config: SceneConfig | None = None,
        *,
        seed: int = 0,
        data: FashionMnist | None = None,
        motion: SceneMotion | None = None,
        drift: SceneStyle | None = None,
        drift_after: int = 0,
    ) -> None:
        """``drift``: from frame ``drift_after`` on, the scene takes that style (a new
        background; the same items, restyled), as if the camera had moved to a new place."""
        self.generator = SceneGenerator(config, seed=seed, data=data)
        self.motion = motion or SceneMotion()
        self.drift = drift
        self.drift_after = drift_after
        self.frame_style = self.generator.config.style
        cfg = self.generator.config
        rng = np.random.default_rng([seed, 7919])
        self.background = make_background(rng, cfg.width, cfg.height)
        self.items = self.generator._place_items(rng, crowded=False)  # a video starts uncluttered
        for item_id, item in enumerate(self.items, start=1):
            speed = rng.uniform(self.motion.min_speed, self.motion.max_speed)
            angle = rng.uniform(0, 2 * np.pi)
            if not self.motion.bounce:  # leaving takes a real horizontal speed: within 40 degrees of it
                angle = rng.uniform(-np.pi * 2 / 9, np.pi * 2 / 9) + (np.pi if rng.random() < 0.5 else 0.0)
            item.vx, item.vy = speed * np.cos(angle), speed * np.sin(angle)
            item.item_id = item_id
        if self.motion.crossings:
            self._pair_for_crossings(rng)
        self._rng = np.random.default_rng([seed, 104729])
        self.t = 0
        self.truth: tuple[TruthItem, ...] = ()
        #: Crossings of the line so far: {"in": n, "out": n} (in: from its left to its right,
        #: as :class:`vlm_core.pipeline.LineSettings` defines them for a top-to-bottom line).
        self.line_crossings = {"in": 0, "out": 0}
        self._sides: dict[int, int] = {}

    @property
    def line_points(self) -> tuple[tuple[float, float], tuple[float, float]] | None:
        """The counted line, top to bottom, in pixels (None without ``line_x``)."""
        if self.motion.line_x is None:
            return None
        x = self.motion.line_x * self.generator.config.width
        return ((x, 0.0), (x, float(self.generator.config.height)))

    def _pair_for_crossings(self, rng: np.random.Generator) -> None:
        """Pairs start at opposite sides on overlapping rows (half an item apart): they pass
        each other, the one drawn later covering part of the other for a while."""
        cfg = self.generator.config
        for a, b in zip(self.items[0::2], self.items[1::2], strict=False):
            offset = float(rng.uniform(0.8, 0.9)) * min(a.size, b.size)
            row = float(rng.uniform(0, max(1.0, cfg.height - max(a.size, b.size) - offset)))
            speed = float(rng.uniform(max(self.motion.min_speed, 1.5), self.motion.max_speed))
            a.x, a.y, a.vx, a.vy = 0.0, row, speed, float(rng.uniform(-0.3, 0.3))
            b.x, b.y = float(cfg.width - b.size), row + offset
            b.vx, b.vy = -speed * float(rng.uniform(0.7, 1.0)), float(rng.uniform(-0.3, 0.3))

    @property
    def style(self) -> SceneStyle:
        """The style of the frame :meth:`next` returns next."""
        if self.drift is not None and self.t >= self.drift_after:
            return self.drift
        return self.generator.config.style

    def _restyle(self, style: SceneStyle) -> None:
        cfg = replace(self.generator.config, style=style)
        self.generator.config = cfg
        rng = np.random.default_rng([self.generator.seed, 15485863])
        self.background = make_background(rng, cfg.width, cfg.height, style)
        low, high = cfg.item_size_range()
        for item in self.items:
            if style is SceneStyle.SMALL:  # keep the centre, shrink into the new range
                size = min(max(round(item.size * SMALL_ITEM_SCALE), low), high)
                item.x += (item.size - size) / 2
                item.y += (item.size - size) / 2
                item.size = size
            _prepare_sprite(item, self.generator.data.images[item.index], style)

    def next(self) -> Sample:
        if self.style is not self.generator.config.style:
            self._restyle(self.style)
        #: The style of the frame just returned.
        self.frame_style = self.style
        sample = render(self.background, self.items, source=f"synthetic:{self.t}")
        columns = (sample.box_ids, sample.box_labels, sample.boxes, sample.box_visibility)
        self.truth = tuple(
            TruthItem(int(i), int(label), tuple(float(v) for v in box), float(vis))  # type: ignore[arg-type]
            for i, label, box, vis in zip(*columns, strict=True)
        )
        self._count_line()
        for item in self.items:
            self._move(item)
        self.t += 1
        if self.motion.turnover and self.t % self.motion.turnover == 0 and self.items:
            self._replace_oldest()
        return sample

    def _replace_oldest(self) -> None:
        oldest = min(range(len(self.items)), key=lambda i: self.items[i].item_id)
        old = self.items[oldest]
        low, high = self.generator.config.item_size_range()
        size = int(self._rng.integers(low, high + 1))
        new = self.generator._new_item(self._rng, size, old.x, old.y)
        new.vx, new.vy = old.vx, old.vy
        new.item_id = max(item.item_id for item in self.items) + 1
        self.items[oldest] = new

    def _move(self, item: _Item) -> None:
        cfg, motion = self.generator.config, self.motion
        if motion.maneuvers:
            self._maneuver(item)
        if item.paused > 0:
            item.paused -= 1
            return
        item.x += item.vx
        item.y += item.vy
        if motion.bounce:
            if not 0 <= item.x <= cfg.width - item.size:
                item.vx = -item.vx
                item.x = min(max(item.x, 0), cfg.width - item.size)
            if not 0 <= item.y <= cfg.height - item.size:
                item.vy = -item.vy
                item.y = min(max(item.y, 0), cfg.height - item.size)
            return
        # Rows stay in frame; across the columns an item leaves, waits out of sight, returns.
        if not 0 <= item.y <= cfg.height - item.size:
            item.vy = -item.vy
            item.y = min(max(item.y, 0), cfg.height - item.size)
        outside = item.x + item.size <= 0 or item.x >= cfg.width
        if outside:
            item.out_frames += 1
            if item.out_frames >= motion.reentry_frames:  # back along the path it left by
                item.vx, item.vy = -item.vx, -item.vy
                item.out_frames = 0
                item.x = float(-item.size + 1) if item.x < 0 else float(cfg.width - 1)

    def _maneuver(self, item: _Item) -> None:
        rng = self._rng
        if item.paused > 0 or rng.random() >= self.motion.maneuver_rate:
            return
        kind = int(rng.integers(3))
        if kind == 0:  # stop for a while
            item.paused = int(rng.integers(8, 30))
        elif kind == 1:  # change speed
            factor = float(rng.uniform(0.5, 1.8))
            speed = float(np.hypot(item.vx, item.vy))
            target = min(max(speed * factor, self.motion.min_speed), self.motion.max_speed)
            scale = target / max(speed, 1e-6)
            item.vx, item.vy = item.vx * scale, item.vy * scale
        else:  # turn by 30-90 degrees
            angle = float(rng.uniform(np.pi / 6, np.pi / 2)) * (1 if rng.random() < 0.5 else -1)
            cos, sin = np.cos(angle), np.sin(angle)
            item.vx, item.vy = item.vx * cos - item.vy * sin, item.vx * sin + item.vy * cos

    def _count_line(self) -> None:
        from vlm_core.stream.analytics import line_side  # the pipeline's own definition of a side

        points = self.line_points
        if points is None:
            return
        segment = np.asarray(points, np.float64)
        for truth in self.truth:
            bx1, _by1, bx2, by2 = truth.box
            side = line_side(segment, ((bx1 + bx2) / 2, by2), self.motion.line_hysteresis_px)
            if side == 0:
                continue
            previous = self._sides.get(truth.item_id)
            self._sides[truth.item_id] = side
            if previous is not None and previous != side:
                self.line_crossings["in" if side > 0 else "out"] += 1


def make_background(
    rng: np.random.Generator, width: int, height: int, style: SceneStyle = SceneStyle.BASE
) -> np.ndarray:
    """One of several background styles: gradient, noise texture, stripes, blobs; or, in
    the clutter style, shapes and lines of an item's size and contrast."""
    if style is SceneStyle.CLUTTER:
        return _clutter_background(rng, width, height)
    kind = int(rng.integers(4))
    c1 = rng.integers(0, 200, size=3).astype(np.float32)
    c2 = rng.integers(0, 200, size=3).astype(np.float32)
    if kind == 0:
        t = np.linspace(0, 1, width, dtype=np.float32)[None, :, None]
        img = c1 * (1 - t) + c2 * t
        img = np.broadcast_to(img, (height, width, 3))
    elif kind == 1:
        noise = rng.random((height // 8 + 1, width // 8 + 1, 1), dtype=np.float32)
        noise = cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC)[..., None]  # type: ignore[assignment]
        img = c1 * (1 - noise) + c2 * noise
    elif kind == 2:
        period = int(rng.integers(12, 48))
        stripes = ((np.arange(width) // period) % 2).astype(np.float32)[None, :, None]
        img = np.broadcast_to(c1 * (1 - stripes) + c2 * stripes, (height, width, 3))
    else:
        img = np.broadcast_to(c1, (height, width, 3)).copy()
        for _ in range(int(rng.integers(3, 9))):
            center = (int(rng.integers(width)), int(rng.integers(height)))
            cv2.circle(img, center, int(rng.integers(10, 60)), rng.integers(0, 200, 3).tolist(), -1)
    grain = rng.normal(0, 6, size=(height, width, 1)).astype(np.float32)
    return np.clip(np.asarray(img, np.float32) + grain, 0, 255).astype(np.uint8)


def _clutter_background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    img = np.full((height, width, 3), rng.integers(20, 120, size=3), np.uint8)
    for _ in range(int(rng.integers(25, 40))):
        color = rng.integers(60, 256, 3).tolist()
        x, y = int(rng.integers(width)), int(rng.integers(height))
        size = int(rng.integers(10, 50))
        shape = int(rng.integers(3))
        if shape == 0:
            cv2.rectangle(img, (x, y), (x + size, y + int(rng.integers(5, 50))), color, -1)
        elif shape == 1:
            cv2.ellipse(img, (x, y), (size, int(rng.integers(4, 30))), float(rng.uniform(0, 180)), 0, 360, color, -1)
        else:
            end = (x + int(rng.integers(-80, 80)), y + int(rng.integers(-80, 80)))
            cv2.line(img, (x, y), end, color, int(rng.integers(2, 7)))
    grain = rng.normal(0, 6, size=(height, width, 1)).astype(np.float32)
    return np.clip(img.astype(np.float32) + grain, 0, 255).astype(np.uint8)


def render(background: np.ndarray, items: list[_Item], *, source: str) -> Sample:
    """Items drawn in order (later ones in front), clipped to the frame. Boxes are amodal
    (the whole item, occluded parts included) and clipped; an item wholly outside is left out."""
    image = background.copy()
    height, width = image.shape[:2]
    mask = np.zeros((height, width), np.uint8)
    owner = np.zeros((height, width), np.int32)  # 1 + index of the item on top
    drawn: list[tuple[int, _Item, np.ndarray, tuple[int, int, int, int], int]] = []
    for index, item in enumerate(items):
        x, y = round(item.x), round(item.y)
        fx1, fy1 = max(x, 0), max(y, 0)
        fx2, fy2 = min(x + item.size, width), min(y + item.size, height)
        if fx1 >= fx2 or fy1 >= fy2:
            continue
        sx, sy = fx1 - x, fy1 - y
        alpha = item.alpha[sy : sy + fy2 - fy1, sx : sx + fx2 - fx1]
        sprite = item.sprite[sy : sy + fy2 - fy1, sx : sx + fx2 - fx1]
        region = image[fy1:fy2, fx1:fx2]
        region[:] = (region * (1 - alpha[..., None]) + sprite * alpha[..., None]).astype(np.uint8)
        solid = alpha > 0.5
        mask[fy1:fy2, fx1:fx2][solid] = item.label + 1
        owner[fy1:fy2, fx1:fx2][solid] = index + 1
        drawn.append((index, item, solid, (fx1, fy1, fx2, fy2), int((item.alpha > 0.5).sum())))
    boxes, labels, ids, visibility, instance_masks = [], [], [], [], []
    for index, item, solid, (fx1, fy1, _fx2, _fy2), total in drawn:
        ys, xs = np.nonzero(solid)
        if len(xs) == 0:
            continue
        boxes.append([fx1 + xs.min(), fy1 + ys.min(), fx1 + xs.max() + 1, fy1 + ys.max() + 1])
        labels.append(item.label)
        ids.append(item.item_id)
        visibility.append(float((owner == index + 1).sum()) / max(total, 1))
        full = np.zeros((height, width), bool)
        full[fy1 : fy1 + solid.shape[0], fx1 : fx1 + solid.shape[1]] = solid
        instance_masks.append(full)
    return Sample(
        image=image,
        boxes=np.array(boxes, np.float32).reshape(-1, 4),
        box_labels=np.array(labels, np.int64),
        mask=mask,
        instance_masks=np.stack(instance_masks) if instance_masks else np.zeros((0, height, width), bool),
        source=source,
        box_ids=np.array(ids, np.int64),
        box_visibility=np.array(visibility, np.float32),
    )


#: In a crowded scene, an item less visible than this (hidden or outside) is no object to
#: find: it is left out of the boxes (its visible pixels stay in the class mask).
MIN_LABELED_VISIBILITY = 0.25


def _without_hidden(sample: Sample) -> Sample:
    keep = sample.box_visibility >= MIN_LABELED_VISIBILITY
    return replace(
        sample,
        boxes=sample.boxes[keep],
        box_labels=sample.box_labels[keep],
        box_ids=sample.box_ids[keep],
        box_visibility=sample.box_visibility[keep],
        instance_masks=None if sample.instance_masks is None else sample.instance_masks[keep],
    )


def _prepare_sprite(item: _Item, gray28: np.ndarray, style: SceneStyle = SceneStyle.BASE) -> None:
    big = cv2.resize(gray28, (item.size, item.size), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    alpha = np.clip((big - _ITEM_THRESHOLD) / 60.0, 0, 1)
    shade = (big / 255.0)[..., None]
    sprite = np.clip(np.array(item.color, np.float32) * (0.35 + 0.65 * shade), 0, 255)
    item.sprite = 255.0 - sprite if style is SceneStyle.NEGATIVE else sprite
    item.alpha = alpha


def _overlaps(a: tuple[float, float, int], b: tuple[float, float, int]) -> bool:
    ax, ay, asz = a
    bx, by, bsz = b
    return not (ax + asz <= bx or bx + bsz <= ax or ay + asz <= by or by + bsz <= ay)
