"""A paraphrase prompt set: every attribute stated, in phrasings the training captions never use.

The template set of :func:`latentdiff.shapes.evaluate.prompt_set` says everything the way the captioner
says it most often. People do not: they put an attribute after the background, say "backdrop" or "the
background is …", write "colored red", sentences and bare lists. These families are for evaluation only;
:mod:`latentdiff.shapes.captions` must not use them (``tests/test_paraphrase.py`` checks that none of their
prompts is a caption the captioner can write). Each family keeps to the world's vocabulary (shape, color,
size, position and background words) plus the connecting words named in :data:`CONNECTIVES`.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .captions import POSITION_LABELS, POSITION_PHRASES
from .world import ATTRIBUTES, is_held_out, sample_attributes

# new words (beyond the captioner's) the phrasings use to connect the vocabulary
CONNECTIVES = ("backdrop", "colored", "it", "is", "and", "the", "shows", "picture", "image", "over")


def _position(attrs: dict, k: int = 0) -> str:
    return POSITION_PHRASES[attrs["position"]][k]


PHRASINGS: dict[str, Callable[[dict], str]] = {
    # the size after the background phrase
    "size last": lambda a: f"a {a['color']} {a['shape']} {_position(a)} on a {a['background']} background, {a['size']}",
    "backdrop": lambda a: f"a {a['size']} {a['color']} {a['shape']} {_position(a)} against a {a['background']} backdrop",
    "background is": lambda a: f"a {a['size']} {a['color']} {a['shape']} {_position(a, 1)}. the background is "
                               f"{a['background']}",
    "image of color": lambda a: f"a {a['background']} image with a {a['size']} {a['color']} {a['shape']} {_position(a)}",
    "colored": lambda a: f"a {a['size']} {a['shape']} colored {a['color']} {_position(a, 1)} on a {a['background']} "
                         "background",
    "sentence": lambda a: f"the picture shows a {a['size']} {a['shape']} {_position(a)}. it is {a['color']} and the "
                          f"background is {a['background']}",
    "bare list": lambda a: f"{a['shape']}, {a['color']}, {a['size']}, {POSITION_LABELS[a['position']][0]}, "
                           f"{a['background']} background",
    "position first": lambda a: f"{_position(a)}, a {a['color']} {a['shape']}, {a['size']}, over a "
                                f"{a['background']} background",
}
PARAPHRASE_SEED = 4321  # the fixed paraphrase set the recorded tables use


def paraphrase_set(n_seen: int = 48, n_heldout: int = 24, seed: int = PARAPHRASE_SEED) -> list[dict]:
    """Prompts (attributes, caption, split 'seen' or 'heldout', phrasing): the phrasings in turn, so each is used
    about equally often in each split; about a fourth of the seen prompts are white on black or black on
    white, the pairs the template set rarely asks for and models most often swap."""
    rng = np.random.default_rng(seed)
    names = list(PHRASINGS)
    out = []
    for split, n in (("seen", n_seen), ("heldout", n_heldout)):
        for i in range(n):
            attrs = sample_attributes(rng, "train" if split == "seen" else "heldout")
            if split == "seen" and rng.random() < 0.25:  # white on black / black on white (a white circle is held out)
                white = rng.integers(2) == 0 and not is_held_out(dict(attrs, color="white"))
                attrs["color"], attrs["background"] = ("white", "black") if white else ("black", "white")
            name = names[i % len(names)]
            out.append(dict(attrs, caption=PHRASINGS[name](attrs), split=split, phrasing=name))
    return out


def accuracy_by_phrasing(readings: list[dict], prompts: list[dict]) -> dict[float, dict[str, float]]:
    """{guidance: {phrasing: fraction of all attributes read right}} from evaluate's readings (readings.json)."""
    by_caption = {p["caption"]: p for p in prompts}
    totals: dict[float, dict[str, list[int]]] = {}
    for row in readings:
        p = by_caption[row["caption"]]
        counts = totals.setdefault(row["guidance"], {}).setdefault(p["phrasing"], [0, 0])
        counts[0] += sum(row["read"][a] == p[a] for a in ATTRIBUTES)
        counts[1] += len(ATTRIBUTES)
    return {w: {name: right / total for name, (right, total) in by_name.items()} for w, by_name in totals.items()}
