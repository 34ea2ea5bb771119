"""Captions of shapes-world images: varied templates and word orders, each stating a subset of attributes.

An attribute the caption leaves out is still drawn at random in the image, so the caption is true of
the image and says nothing about the rest. :func:`parse_caption` reads the stated attributes back.
"""

from __future__ import annotations

import re

import numpy as np

from .world import ATTRIBUTES, BACKGROUNDS, COLORS, POSITIONS, SHAPES, SIZES, check_attributes

# Probability that a caption states each attribute; at least one of shape and color is always stated.
STATE_PROBABILITY = {"shape": 0.9, "color": 0.9, "size": 0.6, "position": 0.6, "background": 0.5}
OBJECT_NOUNS = ("shape", "object")  # said in place of an unstated shape

# How a position is said inside a sentence ("a red circle <phrase>") and as a short label.
POSITION_PHRASES = {
    "top left": ("in the top left corner", "at the top left"),
    "top right": ("in the top right corner", "at the top right"),
    "bottom left": ("in the bottom left corner", "at the bottom left"),
    "bottom right": ("in the bottom right corner", "at the bottom right"),
    "top": ("at the top", "near the top"),
    "bottom": ("at the bottom", "near the bottom"),
    "left": ("on the left", "on the left side"),
    "right": ("on the right", "on the right side"),
    "center": ("in the center", "in the middle"),
}
POSITION_LABELS = {name: (name,) for name in POSITIONS} | {"center": ("center", "middle")}
BACKGROUND_PHRASES = ("on a {} background", "against a {} background", "with a {} background")


def _pick(rng: np.random.Generator, options):
    return options[rng.integers(len(options))]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _noun_phrase(attrs: dict, stated: set[str], rng: np.random.Generator, article: bool = True) -> str:
    """"a large red circle", "red shape", or, now and then, "a circle that is large and red"."""
    noun = attrs["shape"] if "shape" in stated else _pick(rng, OBJECT_NOUNS)
    adjectives = [attrs[k] for k in ("size", "color") if k in stated]
    if adjectives and article and rng.random() < 0.15:
        return f"{_article(noun)} {noun} that is {' and '.join(adjectives)}"
    words = " ".join(adjectives + [noun])
    return f"{_article(words)} {words}" if article else words


def _templates(attrs: dict, stated: set[str], rng: np.random.Generator) -> list[str]:
    """All captions that fit the stated attributes, one per template (the caller picks one)."""
    pos, bg = attrs["position"], attrs["background"]
    np_ = _noun_phrase(attrs, stated, rng)
    pos_phrase = f" {_pick(rng, POSITION_PHRASES[pos])}" if "position" in stated else ""
    bg_phrase = f" {_pick(rng, BACKGROUND_PHRASES).format(bg)}" if "background" in stated else ""
    out = [
        f"{np_}{pos_phrase}{bg_phrase}",  # a large red circle in the top left corner on a white background
        f"{_pick(rng, ('there is', 'a picture of', 'an image of'))} {np_}{pos_phrase}{bg_phrase}",
        # red circle, center, gray background
        ", ".join([_noun_phrase(attrs, stated, rng, article=False)]
                  + ([_pick(rng, POSITION_LABELS[pos])] if "position" in stated else [])
                  + ([f"{bg} background"] if "background" in stated else [])),
    ]
    if "position" in stated:
        out.append(f"{_pick(rng, POSITION_LABELS[pos])}: {np_}{bg_phrase}")  # top left: a small blue square
        out.append(f"{pos_phrase.strip()}, {np_}{bg_phrase}")  # in the middle, a red shape
    if "background" in stated:
        out.append(f"{_article(bg)} {bg} background with {np_}{pos_phrase}")  # a gray background with ...
    return out


def make_caption(attrs: dict, rng: np.random.Generator) -> tuple[str, list[str]]:
    """(caption, stated): a caption true of ``attrs`` and the attribute names it states, in ATTRIBUTES order."""
    check_attributes(attrs)
    stated = {k for k in ATTRIBUTES if rng.random() < STATE_PROBABILITY[k]}
    if not stated & {"shape", "color"}:
        stated.add(_pick(rng, ("shape", "color")))
    caption = _pick(rng, _templates(attrs, stated, rng))
    return caption, [k for k in ATTRIBUTES if k in stated]


_POSITION_WORDS = sorted(
    {label: name for name, labels in POSITION_LABELS.items() for label in labels}.items(),
    key=lambda item: -len(item[0]),  # "top left" before "top" and "left"
)


def _find(words, text: str) -> tuple[str | None, str]:
    """The first of ``words`` found as a whole word in ``text``, and the text with that match removed."""
    for word in words:
        match = re.search(rf"\b{word}\b", text)
        if match:
            return word, text[: match.start()] + " " + text[match.end():]
    return None, text


def parse_caption(caption: str) -> dict[str, str]:
    """The attributes a caption states, read from its words: ``{"color": "red", "shape": "circle", …}``.

    A color followed by "background" is the background; any other color word is the object's color.
    """
    text = caption.lower()
    out = {}
    match = re.search(rf"\b({'|'.join(BACKGROUNDS)}) background\b", text)
    if match:
        out["background"] = match.group(1)
        text = text[: match.start()] + " " + text[match.end():]
    for key, words in (("shape", SHAPES), ("color", tuple(COLORS)), ("size", tuple(SIZES))):
        word, text = _find(words, text)
        if word is not None:
            out[key] = word
    for label, name in _POSITION_WORDS:
        if re.search(rf"\b{label}\b", text):
            out["position"] = name
            break
    return {k: out[k] for k in ATTRIBUTES if k in out}
