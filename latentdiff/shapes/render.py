"""Drawing one shapes-world image: exact point-in-shape tests on a supersampled grid, box-filtered.

Anti-aliasing: each pixel is the average over SUPERSAMPLE × SUPERSAMPLE sample points of whether the
point lies in the shape (rendering at 4× and box-downsampling), then the object color is blended
over the background with that coverage. Pure numpy, so the bytes do not depend on a rasterizer version.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from .world import (
    BACKGROUNDS,
    COLORS,
    GRID_ANCHORS,
    IMAGE_SIZE,
    POSITION_JITTER,
    POSITIONS,
    SIZE_JITTER,
    SIZES,
    check_attributes,
)

SUPERSAMPLE = 4  # samples per pixel along each axis
SQUARE_HALF_SIDE = 0.9  # × R: a square of about the same area as the circle of radius R
CROSS_HALF_WIDTH = 1 / 3  # × R: the arms of the cross are a third of its span wide

# Area of each shape in units of R² (its placement scale), used by the analyzer to read size.
SHAPE_AREA = {
    "circle": np.pi,
    "square": (2 * SQUARE_HALF_SIDE) ** 2,
    "triangle": 1.5,  # apex (0, -R), base corners (±R, R/2): base 2R × height 1.5R / 2
    "cross": 2 * (2 * 2 * CROSS_HALF_WIDTH) - (2 * CROSS_HALF_WIDTH) ** 2,  # two 2R × 2w bars less their overlap
}


def inside(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Whether points at offsets (dx, dy) from the shape's area centroid lie in it (y points down)."""
    if shape == "circle":
        return dx**2 + dy**2 <= r**2
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) <= SQUARE_HALF_SIDE * r
    if shape == "triangle":  # apex up; the centroid sits 1/3 of the height above the base
        return (dy <= r / 2) & (np.abs(dx) <= (dy + r) * 2 / 3)
    if shape == "cross":
        w = CROSS_HALF_WIDTH * r
        ax, ay = np.abs(dx), np.abs(dy)
        return ((ax <= w) & (ay <= r)) | ((ay <= w) & (ax <= r))
    raise ValueError(f"shape={shape!r} is not in the shapes world; choose one of {', '.join(map(repr, SHAPE_AREA))}")


def coverage(shape: str, cx: float, cy: float, r: float, size: int = IMAGE_SIZE) -> np.ndarray:
    """Fraction of each pixel covered by the shape centered at (cx, cy) with scale r: (size, size) float."""
    s = SUPERSAMPLE
    u = (np.arange(size * s) + 0.5) / s  # sample positions in pixel units; pixel i spans [i, i + 1)
    dx, dy = u[None, :] - cx, u[:, None] - cy
    hits = inside(shape, dx, dy, r).astype(np.float64)  # (size·s, size·s)
    return hits.reshape(size, s, size, s).mean(axis=(1, 3))


def placement(attrs: dict, rng: np.random.Generator) -> tuple[float, float, float]:
    """(cx, cy, r): the object's centroid in pixels and its scale, with the random jitter drawn from ``rng``."""
    col, row = POSITIONS[attrs["position"]]
    jx, jy = rng.uniform(-POSITION_JITTER, POSITION_JITTER, size=2)
    r = SIZES[attrs["size"]] * rng.uniform(1 - SIZE_JITTER, 1.0)
    return GRID_ANCHORS[col] + jx, GRID_ANCHORS[row] + jy, r


def render(attrs: dict, rng: np.random.Generator) -> Image.Image:
    """A 64×64 RGB image of one object with ``attrs`` (see :mod:`.world`); ``rng`` draws its jitter.

    The same attributes and the same generator state give the same pixels.
    """
    check_attributes(attrs)
    cx, cy, r = placement(attrs, rng)
    alpha = coverage(attrs["shape"], cx, cy, r)[..., None]  # (64, 64, 1)
    fg = np.asarray(COLORS[attrs["color"]], dtype=np.float64)
    bg = np.asarray(BACKGROUNDS[attrs["background"]], dtype=np.float64)
    pixels = np.rint(bg * (1 - alpha) + fg * alpha).astype(np.uint8)
    return Image.fromarray(pixels)  # (64, 64, 3) uint8 → RGB
