"""Which predicates hold between the objects of a synthetic scene, and which get annotated.

Every predicate is a rule on the two boxes (and, for some, the two shapes), evaluated on
the boxes exactly as the loader returns them, so an annotated relation is true in the
picture. Like VG annotators, the generator names at most the *most salient* true predicate
of an ordered pair (first in ``PREDICATES``), and annotates that pair only with a
predicate-specific probability: generic phrasings ("on", "left of", "near") are written down
far more often than their converses ("under", "right of") or than rare scene-specific
predicates. This makes the annotations long-tailed while the predicate of a pair remains a
function of geometry (and shape), not of the class pair alone.
"""

from __future__ import annotations

import numpy as np

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring")
COLOURS = ("red", "green", "blue", "yellow")
OBJECT_CLASSES = tuple(f"{colour} {shape}" for shape in SHAPES for colour in COLOURS)

# Most salient first; the first true predicate of a pair is the one annotated.
PREDICATES = (
    "wearing",
    "riding",
    "holding",
    "surrounding",
    "pointing at",
    "inside",
    "contains",
    "on",
    "under",
    "next to",
    "overlapping",
    "above",
    "below",
    "left of",
    "right of",
    "bigger than",
    "smaller than",
    "near",
    "far from",
)

# Probability that an ordered pair whose most salient predicate is the key gets annotated.
ANNOTATION_PROBABILITY = {
    "wearing": 0.8,
    "riding": 0.8,
    "holding": 0.8,
    "surrounding": 0.5,
    "pointing at": 0.4,
    "inside": 0.7,
    "contains": 0.08,
    "on": 0.9,
    "under": 0.06,
    "next to": 0.35,
    "overlapping": 0.3,
    "above": 0.45,
    "below": 0.06,
    "left of": 0.4,
    "right of": 0.08,
    "bigger than": 0.08,
    "smaller than": 0.04,
    "near": 0.3,
    "far from": 0.03,
}
# Probability that an annotated pair also gets its second most salient true predicate.
SECOND_PREDICATE_PROBABILITY = 0.05

# Which shapes take part in the shape-conditioned predicates (subject, object).
WEARERS, HATS = ("circle", "square"), ("triangle",)
RIDERS, MOUNTS = ("triangle", "diamond"), ("square",)
HOLDERS, HELD = ("cross",), ("circle", "diamond")
POINTERS = ("triangle",)
SURROUNDERS = ("ring",)


def shape_of(class_index: np.ndarray) -> np.ndarray:
    """0-based object class -> index into SHAPES (classes are shape-major)."""
    return np.asarray(class_index) // len(COLOURS)


def true_predicates(boxes: np.ndarray, shapes: np.ndarray, image_side: float) -> np.ndarray:
    """(n, 4) xyxy boxes, (n,) shape ids -> (P, n, n) bool, [p, i, j]: PREDICATES[p](i, j).

    ``image_side`` is the longest image side; distances and tolerances scale with it.
    The diagonal (i == j) is always False.
    """
    g = _PairGeometry(np.asarray(boxes, dtype=np.float64), image_side)
    is_shape = {name: members[shapes] for name, members in _SHAPE_MEMBERS.items()}
    subject = {k: v[:, None] for k, v in is_shape.items()}
    object_ = {k: v[None, :] for k, v in is_shape.items()}
    inside = g.inside
    on = g.resting_on_top
    above = (g.gap_y_below > g.tol) & g.x_spans_overlap
    left = (g.gap_x_right > g.tol) & g.y_spans_overlap
    bigger = g.area_s >= 3.0 * g.area_o
    rules = {
        "wearing": subject["wearers"] & object_["hats"] & g.hat_on_top,
        "riding": subject["riders"] & object_["mounts"] & on,
        "holding": subject["holders"] & object_["held"] & g.held_at_side,
        "surrounding": subject["surrounders"] & inside.T,
        "pointing at": subject["pointers"] & g.object_above_apex,
        "inside": inside,
        "contains": inside.T,
        "on": on,
        "under": on.T,
        "next to": g.side_by_side,
        "overlapping": g.intersect & ~inside & ~inside.T,
        "above": above,
        "below": above.T,
        "left of": left,
        "right of": left.T,
        "bigger than": bigger,
        "smaller than": bigger.T,
        "near": g.distance < 0.3 * image_side,
        "far from": g.distance > 0.6 * image_side,
    }
    table = np.stack([rules[name] for name in PREDICATES])
    table[:, np.arange(len(boxes)), np.arange(len(boxes))] = False
    return table


def annotate(truth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Pick the annotated relations of one image. truth: (P, n, n) bool from true_predicates.

    Returns (R, 3) int64 rows (subject, object, predicate index into PREDICATES), row-major
    over pairs; a pair with a second annotated predicate has two consecutive rows.
    """
    _, n, _ = truth.shape
    has_any = truth.any(axis=0)
    top = np.where(has_any, truth.argmax(axis=0), -1)  # (n, n) first true predicate
    probability = np.array([ANNOTATION_PROBABILITY[p] for p in PREDICATES])
    chosen = has_any & (rng.random((n, n)) < probability[np.maximum(top, 0)])
    second_draw = rng.random((n, n)) < SECOND_PREDICATE_PROBABILITY
    rows = []
    for s, o in zip(*np.nonzero(chosen)):
        rows.append((s, o, top[s, o]))
        others = np.flatnonzero(truth[:, s, o])[1:]
        if second_draw[s, o] and others.size:
            rows.append((s, o, others[0]))
    return np.array(rows, dtype=np.int64).reshape(-1, 3)


_SHAPE_SETS = {
    "wearers": WEARERS,
    "hats": HATS,
    "riders": RIDERS,
    "mounts": MOUNTS,
    "holders": HOLDERS,
    "held": HELD,
    "pointers": POINTERS,
    "surrounders": SURROUNDERS,
}
# (len(SHAPES),) bool per set: indexing it by shape ids is the membership test.
_SHAPE_MEMBERS = {
    name: np.array([shape in names for shape in SHAPES]) for name, names in _SHAPE_SETS.items()
}


def _along_rows(values: np.ndarray) -> np.ndarray:
    """(n,) -> (n, 1): the subject's value in an (n, n) pair table."""
    return values[:, None]


def _along_columns(values: np.ndarray) -> np.ndarray:
    """(n,) -> (1, n): the object's value in an (n, n) pair table."""
    return values[None, :]


class _PairGeometry:
    """(n, n) pairwise geometry; [i, j] describes subject i against object j."""

    def __init__(self, boxes: np.ndarray, image_side: float) -> None:
        x1, y1, x2, y2 = (boxes[:, k] for k in range(4))
        s, o = _along_rows, _along_columns
        self.tol = max(1.0, 0.02 * image_side)  # "touching" tolerance in pixels
        width, height = x2 - x1, y2 - y1
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        self.area_s, self.area_o = s(width * height), o(width * height)
        overlap_w = np.minimum(s(x2), o(x2)) - np.maximum(s(x1), o(x1))
        overlap_h = np.minimum(s(y2), o(y2)) - np.maximum(s(y1), o(y1))
        self.x_spans_overlap, self.y_spans_overlap = overlap_w > 0, overlap_h > 0
        self.intersect = self.x_spans_overlap & self.y_spans_overlap
        self.gap_x_right = o(x1) - s(x2)  # > 0: subject entirely left of object
        self.gap_y_below = o(y1) - s(y2)  # > 0: subject entirely above object
        self.distance = np.hypot(s(cx) - o(cx), s(cy) - o(cy))
        self.inside = (s(x1) >= o(x1)) & (s(x2) <= o(x2)) & (s(y1) >= o(y1)) & (s(y2) <= o(y2))
        centre_over_object = (s(cx) >= o(x1)) & (s(cx) <= o(x2))
        self.resting_on_top = (
            (np.abs(o(y1) - s(y2)) <= self.tol) & centre_over_object & (s(y1) < o(y1))
        )
        # Object (a hat) sits on the subject's top edge, its lower part over the subject.
        self.hat_on_top = (
            (o(cx) >= s(x1)) & (o(cx) <= s(x2)) & (o(y1) < s(y1)) & (o(y2) > s(y1))
            & (o(y2) <= s(y1) + 0.5 * s(height)) & (o(width * height) < s(width * height))
        )  # fmt: skip
        gap_x = np.maximum(o(x1) - s(x2), s(x1) - o(x2))  # < 0 when the x spans overlap
        min_height = np.minimum(s(height), o(height))
        self.side_by_side = (np.abs(gap_x) <= self.tol) & (overlap_h >= 0.5 * min_height)
        self.held_at_side = (
            (np.abs(gap_x) <= self.tol) & (o(cy) >= s(y1)) & (o(cy) <= s(y2))
            & (o(width * height) < s(width * height))
        )  # fmt: skip
        # The subject's apex is the centre of its top edge (triangles point up).
        self.object_above_apex = (
            (s(y1) - o(y2) > self.tol) & (s(y1) - o(y2) < 0.5 * image_side)
            & (s(cx) >= o(x1)) & (s(cx) <= o(x2))
        )  # fmt: skip
