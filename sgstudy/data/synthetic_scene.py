"""Place and draw the objects of one synthetic scene.

An object's class is what it looks like: one of ``SHAPES`` filled with one of ``COLOURS``
(jittered a little), outlined in dark grey so that touching objects of one colour stay
apart, drawn on a lightly textured background. Objects are placed one after another, each
either freely or in a composition with an earlier object (resting on top, inside, worn like
a hat, at its side, overlapping it, above a triangle's apex), so that the rarer predicates
of ``synthetic_rules`` occur. Apart from overlaps and insides, objects do not touch or
cover one another. Larger objects are drawn first so that no object hides a smaller one.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from sgstudy.data.synthetic_rules import (
    COLOURS,
    HATS,
    HELD,
    HOLDERS,
    MOUNTS,
    OBJECT_CLASSES,
    RIDERS,
    SHAPES,
    WEARERS,
)

MIN_OBJECTS, MAX_OBJECTS = 2, 8
PALETTE = {
    "red": (205, 40, 40),
    "green": (40, 165, 60),
    "blue": (45, 75, 215),
    "yellow": (235, 205, 25),
}
OUTLINE = (35, 35, 35)
# How each new object is placed relative to the scene so far.
PLACEMENTS = ("free", "on", "inside", "hat", "side", "overlap", "point")
PLACEMENT_PROBABILITY = (0.42, 0.16, 0.1, 0.08, 0.12, 0.06, 0.06)
ATTEMPTS = 12

Box = tuple[int, int, int, int]  # x1, y1, x2, y2 pixels
Placed = tuple[Box, int] | None  # a box and its 0-based class, or no room found


def sample_scene(
    rng: np.random.Generator, width: int, height: int
) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (n, 4) int64 xyxy pixels and classes (n,) int64 0-based into OBJECT_CLASSES."""
    boxes: list[Box] = []
    classes: list[int] = []
    target = int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))
    for _ in range(target):
        placed = _place_one(rng, width, height, boxes, classes)
        if placed is not None:
            boxes.append(placed[0])
            classes.append(placed[1])
    scale = 0.5
    while len(boxes) < MIN_OBJECTS:  # crowded scene: add ever smaller free objects
        placed = _free(rng, width, height, boxes, scale)
        if placed is not None:
            boxes.append(placed[0])
            classes.append(placed[1])
        scale *= 0.8
    return np.array(boxes, dtype=np.int64).reshape(-1, 4), np.array(classes, dtype=np.int64)


def render_scene(
    rng: np.random.Generator, width: int, height: int, boxes: np.ndarray, classes: np.ndarray
) -> Image.Image:
    """The picture of a scene: background texture, then objects by decreasing area."""
    image = Image.fromarray(_background(rng, width, height))
    draw = ImageDraw.Draw(image)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    for k in np.argsort(-areas, kind="stable"):
        shape, colour = divmod(int(classes[k]), len(COLOURS))
        base = np.array(PALETTE[COLOURS[colour]])
        fill = tuple(int(v) for v in np.clip(base + rng.integers(-15, 16, 3), 0, 255))
        _draw_shape(draw, SHAPES[shape], [int(v) for v in boxes[k]], fill)
    return image


# ---------------------------------------------------------------- placement
def _place_one(
    rng: np.random.Generator, width: int, height: int, boxes: list[Box], classes: list[int]
) -> Placed:
    """One new (box, class) or None when the chosen placement finds no free spot."""
    mode = PLACEMENTS[int(rng.choice(len(PLACEMENTS), p=PLACEMENT_PROBABILITY))]
    if mode != "free" and boxes:
        parent = int(rng.integers(len(boxes)))
        for _ in range(ATTEMPTS):
            placed = _COMPOSE[mode](rng, boxes[parent], classes[parent])
            if placed is not None and _fits(placed[0], width, height, boxes, allowed=parent):
                return placed
    return _free(rng, width, height, boxes)


def _free(
    rng: np.random.Generator,
    width: int,
    height: int,
    boxes: list[Box],
    scale: float = 1.0,
) -> Placed:
    """A box clear of all others, of side ``scale`` x 12-30% of the image, any class."""
    side = max(width, height)
    for _ in range(ATTEMPTS):
        w, h = _size(rng, scale * side * rng.uniform(0.12, 0.3))
        x1, y1 = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
        box = (x1, y1, x1 + w, y1 + h)
        if _fits(box, width, height, boxes, allowed=None):
            return box, _random_class(rng)
    return None


def _on(rng: np.random.Generator, parent: Box, parent_class: int) -> Placed:
    px1, py1, px2, _ = parent
    w, h = _size(rng, (px2 - px1) * rng.uniform(0.35, 0.8))
    cx = rng.uniform(px1 + 0.25 * (px2 - px1), px2 - 0.25 * (px2 - px1))
    x1 = int(round(cx - w / 2))
    box = (x1, py1 - h, x1 + w, py1)
    return box, _biased_class(rng, parent_class, MOUNTS, RIDERS, 0.6)


def _inside(rng: np.random.Generator, parent: Box, parent_class: int) -> Placed:
    px1, py1, px2, py2 = parent
    inner = min(px2 - px1, py2 - py1)
    w, h = _size(rng, inner * rng.uniform(0.3, 0.5))
    if w + 2 > px2 - px1 or h + 2 > py2 - py1:
        return None
    x1 = int(rng.integers(px1 + 1, px2 - w))
    y1 = int(rng.integers(py1 + 1, py2 - h))
    return (x1, y1, x1 + w, y1 + h), _random_class(rng)


def _hat(rng: np.random.Generator, parent: Box, parent_class: int) -> Placed:
    px1, py1, px2, py2 = parent
    w = max(3, int((px2 - px1) * rng.uniform(0.45, 0.8)))
    h = max(3, int(w * rng.uniform(0.6, 0.9)))
    sink = int(round(rng.uniform(0.1, 0.4) * (py2 - py1)))  # how far it sits over the top
    if sink < 1 or sink >= h:
        return None
    cx = (px1 + px2) / 2 + rng.uniform(-0.15, 0.15) * (px2 - px1)
    x1 = int(round(cx - w / 2))
    box = (x1, py1 + sink - h, x1 + w, py1 + sink)
    return box, _biased_class(rng, parent_class, WEARERS, HATS, 0.7)


def _side(rng: np.random.Generator, parent: Box, parent_class: int) -> Placed:
    px1, py1, px2, py2 = parent
    w, h = _size(rng, (py2 - py1) * rng.uniform(0.45, 0.9))
    cy = rng.uniform(py1 + 0.3 * (py2 - py1), py2 - 0.3 * (py2 - py1))
    y1 = int(round(cy - h / 2))
    x1 = px2 if rng.random() < 0.5 else px1 - w
    return (x1, y1, x1 + w, y1 + h), _biased_class(rng, parent_class, HOLDERS, HELD, 0.6)


def _overlap(rng: np.random.Generator, parent: Box, parent_class: int) -> Placed:
    px1, py1, px2, py2 = parent
    w, h = _size(rng, min(px2 - px1, py2 - py1) * rng.uniform(0.6, 1.0))
    # Centre on a point of the parent's border so that the two boxes overlap partly.
    angle = rng.uniform(0, 2 * np.pi)
    cx = (px1 + px2) / 2 + np.cos(angle) * (px2 - px1) / 2
    cy = (py1 + py2) / 2 + np.sin(angle) * (py2 - py1) / 2
    x1, y1 = int(round(cx - w / 2)), int(round(cy - h / 2))
    return (x1, y1, x1 + w, y1 + h), _random_class(rng)


def _point(rng: np.random.Generator, parent: Box, parent_class: int) -> Placed:
    if SHAPES[parent_class // len(COLOURS)] != "triangle":
        return None
    px1, py1, px2, py2 = parent
    w, h = _size(rng, max(px2 - px1, py2 - py1) * rng.uniform(0.6, 1.2))
    gap = max(3, int(rng.uniform(0.3, 1.2) * (py2 - py1)))
    cx = (px1 + px2) / 2 + rng.uniform(-0.3, 0.3) * w
    x1 = int(round(cx - w / 2))
    return (x1, py1 - gap - h, x1 + w, py1 - gap), _random_class(rng)


_COMPOSE = {
    "on": _on,
    "inside": _inside,
    "hat": _hat,
    "side": _side,
    "overlap": _overlap,
    "point": _point,
}


def _fits(box: Box, width: int, height: int, boxes: list[Box], allowed: int | None) -> bool:
    """Inside the image, and clear (by a pixel) of every object except ``allowed``."""
    x1, y1, x2, y2 = box
    if x1 < 0 or y1 < 0 or x2 >= width or y2 >= height or x2 - x1 < 3 or y2 - y1 < 3:
        return False
    for k, (bx1, by1, bx2, by2) in enumerate(boxes):
        if k != allowed and x1 <= bx2 + 1 and bx1 <= x2 + 1 and y1 <= by2 + 1 and by1 <= y2 + 1:
            return False
    return True


def _size(rng: np.random.Generator, side: float) -> tuple[int, int]:
    """(w, h) around ``side`` pixels with a mild random aspect ratio, at least 4 pixels."""
    aspect = np.exp(rng.uniform(-0.2, 0.2))
    return max(4, int(round(side * aspect))), max(4, int(round(side / aspect)))


def _random_class(rng: np.random.Generator) -> int:
    return int(rng.integers(len(OBJECT_CLASSES)))


def _biased_class(
    rng: np.random.Generator,
    parent_class: int,
    parent_shapes: tuple[str, ...],
    child_shapes: tuple[str, ...],
    probability: float,
) -> int:
    """A child class whose shape is one of ``child_shapes`` with ``probability`` when the
    parent's shape is in ``parent_shapes`` (scenes favour their typical compositions)."""
    if SHAPES[parent_class // len(COLOURS)] in parent_shapes and rng.random() < probability:
        shape = SHAPES.index(child_shapes[int(rng.integers(len(child_shapes)))])
        return shape * len(COLOURS) + int(rng.integers(len(COLOURS)))
    return _random_class(rng)


# ---------------------------------------------------------------- drawing
def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """(H, W, 3) uint8: a light tint, a soft gradient and pixel noise."""
    tint = rng.uniform(175, 235, size=3)
    direction = rng.normal(size=2)
    direction = direction / (np.linalg.norm(direction) + 1e-9)
    strength = rng.uniform(10, 25) / max(width, height)
    along_x = np.arange(width, dtype=np.float32)[None, :] * (direction[0] * strength)
    along_y = np.arange(height, dtype=np.float32)[:, None] * (direction[1] * strength)
    ramp = along_x + along_y
    pixels = rng.standard_normal(size=(height, width, 3), dtype=np.float32)
    pixels *= 9.0
    pixels += ramp[..., None]
    pixels += tint.astype(np.float32)
    return np.clip(pixels, 0, 255, out=pixels).astype(np.uint8)


def _draw_shape(
    draw: ImageDraw.ImageDraw, shape: str, box: list[int], fill: tuple[int, ...]
) -> None:
    x1, y1, x2, y2 = box
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    if shape == "circle":
        draw.ellipse(box, fill=fill, outline=OUTLINE)
    elif shape == "square":
        draw.rectangle(box, fill=fill, outline=OUTLINE)
    elif shape == "triangle":
        draw.polygon([(x1, y2), (x2, y2), (cx, y1)], fill=fill, outline=OUTLINE)
    elif shape == "diamond":
        draw.polygon([(cx, y1), (x2, cy), (cx, y2), (x1, cy)], fill=fill, outline=OUTLINE)
    elif shape == "cross":
        a, b = (x2 - x1) / 3, (y2 - y1) / 3
        points = [
            (x1 + a, y1), (x2 - a, y1), (x2 - a, y1 + b), (x2, y1 + b), (x2, y2 - b),
            (x2 - a, y2 - b), (x2 - a, y2), (x1 + a, y2), (x1 + a, y2 - b), (x1, y2 - b),
            (x1, y1 + b), (x1 + a, y1 + b),
        ]  # fmt: skip
        draw.polygon(points, fill=fill, outline=OUTLINE)
    elif shape == "ring":
        thickness = max(2, round(0.22 * min(x2 - x1, y2 - y1)))
        draw.ellipse(box, outline=fill, width=thickness)
        draw.ellipse(box, outline=OUTLINE)
        inner = [x1 + thickness, y1 + thickness, x2 - thickness, y2 - thickness]
        if inner[2] > inner[0] and inner[3] > inner[1]:
            draw.ellipse(inner, outline=OUTLINE)
    else:
        raise ValueError(f"unknown shape {shape!r}")
