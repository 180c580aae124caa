"""Scenes composed of real Fashion-MNIST items on varied backgrounds.

Every scene comes with exact boxes, a class mask and per-item labels, so one generator
serves classification (crops), detection and segmentation, and :class:`SceneVideo` turns
it into a moving ``synthetic://`` camera. Everything is deterministic given the seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from vlm_core.contracts.sample import Sample
from vlm_core.datasets.fashion_mnist import FASHION_MNIST_CLASSES, FashionMnist, load_fashion_mnist

#: Detection class names (no background); segmentation adds "background" at index 0.
SCENE_CLASSES = FASHION_MNIST_CLASSES
SCENE_SEGMENTATION_CLASSES = ("background", *FASHION_MNIST_CLASSES)
_ITEM_THRESHOLD = 30


@dataclass(frozen=True)
class SceneConfig:
    width: int = 320
    height: int = 240
    min_items: int = 1
    max_items: int = 4
    min_item_size: int = 48
    max_item_size: int = 110
    split: str = "train"


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


class SceneGenerator:
    def __init__(self, config: SceneConfig | None = None, *, seed: int = 0, data: FashionMnist | None = None) -> None:
        self.config = config or SceneConfig()
        self.seed = seed
        self.data = data or load_fashion_mnist(self.config.split)
        self.class_names = SCENE_CLASSES

    def scene(self, index: int) -> Sample:
        """Scene number ``index``; the same (seed, index) always gives the same scene."""
        rng = np.random.default_rng([self.seed, index])
        background = make_background(rng, self.config.width, self.config.height)
        items = self._place_items(rng)
        return render(background, items, source=f"scene:{self.seed}:{index}")

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
        _prepare_sprite(item, self.data.images[index])
        return item

    def _place_items(self, rng: np.random.Generator) -> list[_Item]:
        cfg = self.config
        count = int(rng.integers(cfg.min_items, cfg.max_items + 1))
        items: list[_Item] = []
        for _ in range(count):
            for _attempt in range(30):
                size = int(rng.integers(cfg.min_item_size, min(cfg.max_item_size, cfg.width, cfg.height) + 1))
                x = float(rng.integers(0, cfg.width - size + 1))
                y = float(rng.integers(0, cfg.height - size + 1))
                if all(not _overlaps((x, y, size), (o.x, o.y, o.size)) for o in items):
                    items.append(self._new_item(rng, size, x, y))
                    break
        return items


class SceneVideo:
    """A moving scene: items drift and bounce off the edges. Frame ``t`` is deterministic."""

    def __init__(self, config: SceneConfig | None = None, *, seed: int = 0, data: FashionMnist | None = None) -> None:
        self.generator = SceneGenerator(config, seed=seed, data=data)
        cfg = self.generator.config
        rng = np.random.default_rng([seed, 7919])
        self.background = make_background(rng, cfg.width, cfg.height)
        self.items = self.generator._place_items(rng)
        for item in self.items:
            speed = rng.uniform(1.0, 4.0)
            angle = rng.uniform(0, 2 * np.pi)
            item.vx, item.vy = speed * np.cos(angle), speed * np.sin(angle)
        self.t = 0

    def next(self) -> Sample:
        cfg = self.generator.config
        sample = render(self.background, self.items, source=f"synthetic:{self.t}")
        for item in self.items:
            item.x += item.vx
            item.y += item.vy
            if not 0 <= item.x <= cfg.width - item.size:
                item.vx = -item.vx
                item.x = min(max(item.x, 0), cfg.width - item.size)
            if not 0 <= item.y <= cfg.height - item.size:
                item.vy = -item.vy
                item.y = min(max(item.y, 0), cfg.height - item.size)
        self.t += 1
        return sample


def make_background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """One of several background styles: gradient, noise texture, stripes, blobs."""
    style = int(rng.integers(4))
    c1 = rng.integers(0, 200, size=3).astype(np.float32)
    c2 = rng.integers(0, 200, size=3).astype(np.float32)
    if style == 0:
        t = np.linspace(0, 1, width, dtype=np.float32)[None, :, None]
        img = c1 * (1 - t) + c2 * t
        img = np.broadcast_to(img, (height, width, 3))
    elif style == 1:
        noise = rng.random((height // 8 + 1, width // 8 + 1, 1), dtype=np.float32)
        noise = cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC)[..., None]  # type: ignore[assignment]
        img = c1 * (1 - noise) + c2 * noise
    elif style == 2:
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


def render(background: np.ndarray, items: list[_Item], *, source: str) -> Sample:
    image = background.copy()
    height, width = image.shape[:2]
    mask = np.zeros((height, width), np.uint8)
    instance_masks = []
    boxes = []
    labels = []
    for item in items:
        x, y = round(item.x), round(item.y)
        alpha = item.alpha[..., None]
        region = image[y : y + item.size, x : x + item.size]
        region[:] = (region * (1 - alpha) + item.sprite * alpha).astype(np.uint8)
        solid = item.alpha > 0.5
        mask[y : y + item.size, x : x + item.size][solid] = item.label + 1
        full = np.zeros((height, width), bool)
        full[y : y + item.size, x : x + item.size] = solid
        ys, xs = np.nonzero(solid)
        if len(xs) == 0:
            continue
        boxes.append([x + xs.min(), y + ys.min(), x + xs.max() + 1, y + ys.max() + 1])
        labels.append(item.label)
        instance_masks.append(full)
    return Sample(
        image=image,
        boxes=np.array(boxes, np.float32).reshape(-1, 4),
        box_labels=np.array(labels, np.int64),
        mask=mask,
        instance_masks=np.stack(instance_masks) if instance_masks else np.zeros((0, height, width), bool),
        source=source,
    )


def _prepare_sprite(item: _Item, gray28: np.ndarray) -> None:
    big = cv2.resize(gray28, (item.size, item.size), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    alpha = np.clip((big - _ITEM_THRESHOLD) / 60.0, 0, 1)
    shade = (big / 255.0)[..., None]
    item.sprite = np.clip(np.array(item.color, np.float32) * (0.35 + 0.65 * shade), 0, 255)
    item.alpha = alpha


def _overlaps(a: tuple[float, float, int], b: tuple[float, float, int]) -> bool:
    ax, ay, asz = a
    bx, by, bsz = b
    return not (ax + asz <= bx or bx + bsz <= ax or ay + asz <= by or by + bsz <= ay)
