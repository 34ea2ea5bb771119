"""The shapes world: the procedural image–caption dataset of the offline default model, and its analyzer.

One object per 64×64 image (shape, color, size, position on a 3×3 grid, background); captions state
some of those attributes; a fixed list of (shape, color) pairs is held out of training; a non-learned
analyzer reads the attributes back from an image, so generated images can be scored.
"""

from .analyze import analyze
from .captions import make_caption, parse_caption
from .dataset import render_dataset
from .render import render
from .world import ATTRIBUTES, BACKGROUNDS, COLORS, HELD_OUT, POSITIONS, SHAPES, SIZES, SPLITS, sample_attributes

__all__ = [
    "ATTRIBUTES",
    "BACKGROUNDS",
    "COLORS",
    "HELD_OUT",
    "POSITIONS",
    "SHAPES",
    "SIZES",
    "SPLITS",
    "analyze",
    "make_caption",
    "parse_caption",
    "render",
    "render_dataset",
    "sample_attributes",
]
