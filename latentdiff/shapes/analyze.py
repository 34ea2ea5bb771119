"""Reading a shapes-world image back into attributes, with fixed geometric rules (nothing learned).

0. a grainy image (noisy border) is box-blurred first;
1. background: the dominant named background color of the border pixels;
2. object: the largest 8-connected blob of pixels far from the observed background color;
3. color: the nearest named color to the median of the purest half of the blob's interior (eroded) pixels;
4. coverage α per pixel: projection of (pixel − background) onto (object − background), in [0, 1];
5. shape: nearest prototype of (fill of the bounding box, solidity, vertical asymmetry);
6. size: the scale R implied by the area Σα for that shape; position: the α-centroid's nearest grid anchor.

Imperfect images (noise, blur, a missing object) give a best guess; no object gives "none".
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

from .render import SHAPE_AREA
from .world import BACKGROUNDS, COLORS, GRID_ANCHORS, IMAGE_SIZE, NONE, POSITIONS, SIZE_JITTER, SIZES

BORDER = 2  # pixels of the image edge read as background
# RGB distance from the background beyond which a pixel is object: under half of the closest
# object/background pair (purple on gray, ~105 apart)
MASK_DISTANCE = 48.0
MIN_OBJECT_PIXELS = 6  # a blob smaller than this is noise, not an object
MAX_OBJECT_FRACTION = 0.5  # a blob covering more of the image than this is not one of our objects
MIN_CORE_PIXELS = 4  # below this many eroded pixels, the color is read from the whole blob
MAD_TO_SIGMA = 1.4826  # σ of a normal distribution per unit of median absolute deviation
NOISE_SIGMA = 4.0  # background grain (robust std, RGB units) above which the image is box-blurred first

# Shape prototypes in feature space (fill, solidity, asymmetry) and the spread that scales each feature.
# fill = area / bounding box (see _features); solidity = pixel area / convex hull of the pixel squares;
# asymmetry = (centroid − box middle) / box height, positive when the mass sits low (triangle apex up).
# The values are the middles of the ranges measured on 3000 renders (ideal: circle π/4 ≈ 0.79 fill,
# square 1, triangle 1/2 and asymmetry 1/6, cross 5/9 fill and 5/7 solidity; pixel staircases lower
# the measured solidity of curved and slanted edges, most at the small size).
PROTOTYPES = {
    "circle": (0.79, 0.93, 0.0),
    "square": (0.99, 0.99, 0.0),
    "triangle": (0.57, 0.88, 0.15),
    "cross": (0.555, 0.73, 0.0),
}
FEATURE_SCALE = (0.08, 0.06, 0.05)

_POSITION_NAMES = {cell: name for name, cell in POSITIONS.items()}
# R between the sizes (geometric mean, at the mean jitter) separates small from large.
_SIZE_THRESHOLD = float(np.sqrt(SIZES["small"] * SIZES["large"]) * (1 - SIZE_JITTER / 2))


def _as_array(image) -> np.ndarray:
    """(64, 64, 3) float64 in [0, 255] from a PIL image or an (H, W[, C]) uint8 / [0, 1]-float array."""
    if isinstance(image, Image.Image):
        image = image.convert("RGB")
    else:
        array = np.asarray(image)
        if array.ndim == 2:
            array = np.repeat(array[..., None], 3, axis=2)
        if array.ndim != 3 or array.shape[2] not in (3, 4):
            raise ValueError(f"analyze needs an RGB image, got an array of shape {array.shape}")
        if np.issubdtype(array.dtype, np.floating):  # floats are read as [0, 1]
            array = np.rint(np.clip(array, 0.0, 1.0) * 255)
        image = Image.fromarray(array[..., :3].astype(np.uint8))
    if image.size != (IMAGE_SIZE, IMAGE_SIZE):  # read other sizes at the world's resolution
        image = image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)
    return np.asarray(image, dtype=np.float64)


def _border(a: np.ndarray) -> np.ndarray:
    """The pixels of the image's outer ring, BORDER wide: (N, 3)."""
    return np.concatenate([a[:BORDER].reshape(-1, 3), a[-BORDER:].reshape(-1, 3),
                           a[:, BORDER:-BORDER][:, :BORDER].reshape(-1, 3),
                           a[:, BORDER:-BORDER][:, -BORDER:].reshape(-1, 3)])


def _noise_sigma(pixels: np.ndarray) -> float:
    """Robust standard deviation (from the median absolute deviation) of each channel; the largest."""
    mad = np.median(np.abs(pixels - np.median(pixels, axis=0)), axis=0)
    return float(MAD_TO_SIGMA * mad.max())


def _nearest(rgb: np.ndarray, palette: dict[str, tuple[int, int, int]]) -> np.ndarray:
    """Index into ``palette`` of the nearest named color for each RGB row of ``rgb`` (N, 3)."""
    colors = np.asarray(list(palette.values()), dtype=np.float64)
    return np.argmin(((rgb[:, None, :] - colors[None]) ** 2).sum(-1), axis=1)


def _shift(mask: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``mask`` (boolean or integer) moved by (dy, dx), filled with False / 0."""
    out = np.zeros_like(mask)
    h, w = mask.shape
    out[max(dy, 0): h + min(dy, 0), max(dx, 0): w + min(dx, 0)] = mask[max(-dy, 0): h - max(dy, 0),
                                                                     max(-dx, 0): w - max(dx, 0)]
    return out


_NEIGHBORS_8 = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]
_NEIGHBORS_4 = [(-1, 0), (1, 0), (0, -1), (0, 1)]


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a boolean mask (labels spread by max-propagation)."""
    labels = np.where(mask, np.arange(1, mask.size + 1).reshape(mask.shape), 0)
    while True:
        spread = labels.copy()
        for dy, dx in _NEIGHBORS_8:
            spread = np.maximum(spread, _shift(labels, dy, dx))
        spread = np.where(mask, spread, 0)
        if np.array_equal(spread, labels):
            break
        labels = spread
    ids, counts = np.unique(labels[mask], return_counts=True)
    return labels == ids[np.argmax(counts)] if len(ids) else mask


def _hull_area(mask: np.ndarray) -> float:
    """Area of the convex hull of the pixel squares of ``mask`` (Andrew's monotone chain, shoelace)."""
    points = set()
    for y in np.flatnonzero(mask.any(axis=1)):
        xs = np.flatnonzero(mask[y])
        for x in (xs[0], xs[-1] + 1):
            points.update({(int(x), int(y)), (int(x), int(y) + 1)})
    pts = sorted(points)
    if len(pts) < 3:
        return 0.0

    def half(seq):
        chain = []
        for p in seq:
            while len(chain) >= 2 and ((chain[-1][0] - chain[-2][0]) * (p[1] - chain[-2][1])
                                       - (chain[-1][1] - chain[-2][1]) * (p[0] - chain[-2][0])) <= 0:
                chain.pop()
            chain.append(p)
        return chain[:-1]

    hull = np.asarray(half(pts) + half(pts[::-1]), dtype=np.float64)
    x, y = hull[:, 0], hull[:, 1]
    return 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def _features(alpha: np.ndarray) -> tuple[float, float, float]:
    """(fill, solidity, asymmetry) of a coverage map; see PROTOTYPES."""
    mask = alpha > 0.5
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        return 0.0, 0.0, 0.0
    # fill: the mean of the sub-pixel estimate (exact on clean edges, inflated by grain) and the pixel
    # mask's (quantized, but a rectangle of pixels stays exactly 1 under noise and blur)
    width, height = alpha.max(axis=0).sum(), alpha.max(axis=1).sum()  # sub-pixel extents
    subpixel_fill = alpha.sum() / max(width * height, 1e-9)
    pixel_fill = mask.sum() / ((rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1))
    fill = (subpixel_fill + pixel_fill) / 2
    solidity = mask.sum() / max(_hull_area(mask), 1e-9)
    ys = np.arange(alpha.shape[0]) + 0.5
    centroid_y = (alpha.sum(axis=1) * ys).sum() / alpha.sum()
    middle = (rows[0] + rows[-1] + 1) / 2
    asymmetry = (centroid_y - middle) / max(height, 1e-9)
    return float(fill), float(solidity), float(asymmetry)


def _classify_shape(features: tuple[float, float, float]) -> str:
    f = np.asarray(features) / FEATURE_SCALE
    return min(PROTOTYPES, key=lambda s: float(((f - np.asarray(PROTOTYPES[s]) / FEATURE_SCALE) ** 2).sum()))


def _segment(image):
    """(pixels, background name, observed background RGB, distance to it, the object's blob mask)."""
    a = _as_array(image)  # (64, 64, 3)
    if _noise_sigma(_border(a)) > NOISE_SIGMA:  # grainy: a 3×3 box blur averages the grain away
        a = np.asarray(Image.fromarray(a.astype(np.uint8)).filter(ImageFilter.BoxBlur(1)), dtype=np.float64)
    border = _border(a)
    names = _nearest(border, BACKGROUNDS)
    winner = int(np.bincount(names, minlength=len(BACKGROUNDS)).argmax())
    bg = np.median(border[names == winner], axis=0)  # the observed background color
    distance = np.linalg.norm(a - bg, axis=-1)  # (64, 64)
    return a, list(BACKGROUNDS)[winner], bg, distance, _largest_component(distance > MASK_DISTANCE)


def object_mask(image) -> np.ndarray:
    """Boolean (64, 64) mask of the object: the largest region far from the background color."""
    return _segment(image)[-1]


def analyze(image, details: bool = False) -> dict:
    """Attributes of the one object in a 64×64 RGB image (PIL image or uint8 / [0, 1]-float array).

    Returns ``{"shape", "color", "size", "position", "background"}`` as vocabulary words; "none" for
    the object's attributes when no object is found. Other image sizes are box-resized to 64×64 first.
    With ``details=True`` the measurements are added under "features".
    """
    a, background, bg, distance, blob = _segment(image)
    h, w, _ = a.shape
    result = {"shape": NONE, "color": NONE, "size": NONE, "position": NONE, "background": background}
    if not MIN_OBJECT_PIXELS <= blob.sum() <= MAX_OBJECT_FRACTION * h * w:
        return result
    core = blob.copy()
    for dy, dx in _NEIGHBORS_4:
        core &= _shift(blob, dy, dx)
    if core.sum() < MIN_CORE_PIXELS:  # a thin or tiny object: fall back to the whole blob
        core = blob
    core &= distance >= np.median(distance[core])  # the purest half: blur mixes edges with the background
    fg = np.median(a[core], axis=0)
    result["color"] = list(COLORS)[int(_nearest(fg[None], COLORS)[0])]

    # coverage α near the blob (the blob grown by one pixel, to catch anti-aliased edges)
    near = blob.copy()
    for dy, dx in _NEIGHBORS_8:
        near |= _shift(blob, dy, dx)
    direction = fg - bg
    alpha = np.clip((a - bg) @ direction / max(float(direction @ direction), 1.0), 0.0, 1.0) * near
    area = float(alpha.sum())
    if area < MIN_OBJECT_PIXELS / 2:  # nothing like the object's color after all
        return result
    features = _features(alpha)
    shape = _classify_shape(features)
    scale = np.sqrt(area / SHAPE_AREA[shape])
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    cx, cy = (alpha * xs).sum() / area, (alpha * ys).sum() / area
    anchors = np.asarray(GRID_ANCHORS)
    cell = (int(np.argmin(abs(anchors - cx))), int(np.argmin(abs(anchors - cy))))  # (column, row)
    result.update(shape=shape, size="small" if scale < _SIZE_THRESHOLD else "large", position=_POSITION_NAMES[cell])
    if details:
        result["features"] = {"fill": features[0], "solidity": features[1], "asymmetry": features[2],
                              "area": area, "scale": float(scale), "centroid": (float(cx), float(cy)),
                              "object_rgb": fg.tolist(), "background_rgb": bg.tolist()}
    return result
