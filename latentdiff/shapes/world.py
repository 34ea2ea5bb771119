"""The vocabulary of the shapes world: shapes, colors, sizes, positions, backgrounds, held-out pairs.

Everything the renderer draws, the captioner says and the analyzer reads is named here, once.
An image holds one object; its attributes are a plain dict ``{"shape", "color", "size", "position",
"background"}`` of vocabulary words, the same dict that :func:`latentdiff.shapes.analyze` returns.
"""

from __future__ import annotations

import numpy as np

IMAGE_SIZE = 64  # pixels, square
ATTRIBUTES = ("shape", "color", "size", "position", "background")
SPLITS = ("train", "heldout")
NONE = "none"  # what the analyzer says for an attribute it cannot read (no object found)

SHAPES = ("circle", "square", "triangle", "cross")

# Object colors, far apart in RGB (the closest pair, red/orange, is ~103 apart) so that the nearest
# named color is unambiguous; white and black objects are drawn only on the other backgrounds.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (245, 125, 0),
    "yellow": (245, 225, 30),
    "green": (30, 170, 50),
    "blue": (30, 60, 225),
    "purple": (135, 40, 185),
    "white": (255, 255, 255),
    "black": (0, 0, 0),
}
MIN_COLOR_DISTANCE = 100.0  # RGB distance between any two different named colors, backgrounds included
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": COLORS["white"],
    "gray": (128, 128, 128),
    "black": COLORS["black"],
}

# Object scale R in pixels: every shape fits in the box [-R, R]² around its placement point
# (its area centroid). Large is twice small: four times the area.
SIZES: dict[str, float] = {"small": 6.0, "large": 12.0}
SIZE_JITTER = 0.08  # R is drawn uniformly from [(1 - SIZE_JITTER)·R, R]

# Positions are a 3×3 grid. Objects are placed at the anchors below plus a jitter of at most
# POSITION_JITTER pixels per axis. The anchors sit inside the three thirds of the image but are pulled
# in from the thirds' centers (10.7, 53.3) so that a large object never touches the image border; the
# analyzer assigns a centroid to the nearest anchor, so jitter never moves an object into another cell.
GRID_ANCHORS = (16.0, 32.0, 48.0)  # pixels, for both x (left→right) and y (top→bottom)
POSITION_JITTER = 2.0
POSITIONS: dict[str, tuple[int, int]] = {  # name → (column, row) in the grid
    "top left": (0, 0), "top": (1, 0), "top right": (2, 0),
    "left": (0, 1), "center": (1, 1), "right": (2, 1),
    "bottom left": (0, 2), "bottom": (1, 2), "bottom right": (2, 2),
}

# (shape, color) pairs never rendered in the train split; each shape and each color still appears in
# training with other partners. The heldout split renders only these pairs.
HELD_OUT: tuple[tuple[str, str], ...] = (
    ("circle", "green"),
    ("square", "yellow"),
    ("triangle", "purple"),
    ("cross", "red"),
    ("circle", "white"),
)

VOCABULARY: dict[str, tuple[str, ...]] = {
    "shape": SHAPES,
    "color": tuple(COLORS),
    "size": tuple(SIZES),
    "position": tuple(POSITIONS),
    "background": tuple(BACKGROUNDS),
}


def check_attributes(attrs: dict) -> None:
    """Raise a ValueError naming the first attribute of ``attrs`` that is missing or not in the vocabulary."""
    for key in ATTRIBUTES:
        if key not in attrs:
            raise ValueError(f"attributes {attrs!r} lack {key!r}")
        if attrs[key] not in VOCABULARY[key]:
            choices = ", ".join(map(repr, VOCABULARY[key]))
            raise ValueError(f"{key}={attrs[key]!r} is not in the shapes world; choose one of {choices}")
    if attrs["background"] == attrs["color"]:
        raise ValueError(f"a {attrs['color']} object on a {attrs['background']} background would be invisible")


def is_held_out(attrs: dict) -> bool:
    """Whether the (shape, color) pair of ``attrs`` is one of :data:`HELD_OUT`."""
    return (attrs["shape"], attrs["color"]) in HELD_OUT


def sample_attributes(rng: np.random.Generator, split: str = "train") -> dict[str, str]:
    """Draw the attributes of one image, uniformly over the pairs of ``split`` and the other attributes.

    ``train`` draws (shape, color) from all pairs except :data:`HELD_OUT`; ``heldout`` only from those.
    The background is uniform over the backgrounds that differ from the object's color.
    """
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not supported; choose one of {', '.join(map(repr, SPLITS))}")
    pairs = [(s, c) for s in SHAPES for c in COLORS if ((s, c) in HELD_OUT) == (split == "heldout")]
    shape, color = pairs[rng.integers(len(pairs))]
    backgrounds = [b for b in BACKGROUNDS if b != color]
    return {
        "shape": shape,
        "color": color,
        "size": VOCABULARY["size"][rng.integers(len(SIZES))],
        "position": VOCABULARY["position"][rng.integers(len(POSITIONS))],
        "background": backgrounds[rng.integers(len(backgrounds))],
    }
