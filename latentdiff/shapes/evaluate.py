"""`latentdiff eval`: how well a model's images follow shapes-world prompts, read by the analyzer.

A fixed prompt set states every attribute ("a large red circle in the top left corner on a white
background") for seen (shape, color) pairs and for the held-out pairs the training split never shows.
Each prompt is generated with several seeds at each guidance scale; the analyzer reads the attributes
back, and accuracy is reported per attribute, for seen and held-out prompts, per guidance.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from .analyze import analyze
from .captions import POSITION_PHRASES
from .world import ATTRIBUTES, sample_attributes

ROUND_TRIP = "VAE round trip"  # the results key of the VAE's ceiling (see round_trip_ceiling)


def canonical_caption(attrs: dict) -> str:
    """Every attribute stated, in the most common template."""
    return (f"a {attrs['size']} {attrs['color']} {attrs['shape']} {POSITION_PHRASES[attrs['position']][0]} "
            f"on a {attrs['background']} background")


PROMPT_SEED = 1234  # the fixed prompt set every table in benchmarks/README.md uses unless it says otherwise


def prompt_set(n_seen: int = 48, n_heldout: int = 24, seed: int = PROMPT_SEED) -> list[dict]:
    """Fixed prompts: attributes, caption and split ('seen' or 'heldout')."""
    rng = np.random.default_rng(seed)
    out = []
    for split, n in (("seen", n_seen), ("heldout", n_heldout)):
        for _ in range(n):
            attrs = sample_attributes(rng, "train" if split == "seen" else "heldout")
            out.append(dict(attrs, caption=canonical_caption(attrs), split=split))
    return out


def accuracy(scored: Sequence[tuple[dict, dict]]) -> dict:
    """{split: {attribute: fraction read right}} from (prompt, analyzer reading) pairs; splits without pairs left out."""
    by_split = {s: [(p, r) for p, r in scored if p["split"] == s] for s in ("seen", "heldout")}
    return {s: {a: sum(r[a] == p[a] for p, r in pairs) / len(pairs) for a in ATTRIBUTES}
            for s, pairs in by_split.items() if pairs}


def evaluate(pipe, prompts: Sequence[dict], guidances: Sequence[float], seeds: int = 2, chunk: int = 24,
             out_dir: Path | None = None, progress: bool = False, round_trip=None, **settings) -> dict:
    """{guidance: {split: {attribute: accuracy}}}; also writes grids and a JSON of every reading to out_dir.

    ``settings`` (steps, sampler, eta, guidance_rescale, …) override the model's generation defaults.

    With ``round_trip`` (the model's VAE encode → decode on PIL images), the results also hold
    :data:`ROUND_TRIP`, the ceiling of :func:`round_trip_ceiling`."""
    from ..pipelines.images import grid, save_png

    results, readings = {}, []
    for w in guidances:
        scored, images = [], []
        for start in range(0, len(prompts), chunk):
            part = prompts[start:start + chunk]
            generated = pipe.generate([p["caption"] for p in part], guidance=w, num_images=seeds,
                                      seed=start * seeds, progress=progress, **settings)
            for k, g in enumerate(generated):
                p = part[k // seeds]
                read = analyze(g.image)
                scored.append((p, read))
                readings.append({"guidance": w, "caption": p["caption"], "split": p["split"], "seed": g.params["seed"],
                                 "read": read})
                images.append(g.image)
        results[w] = accuracy(scored)
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            save_png(grid(images, columns=seeds * 8), out_dir / f"grid-guidance-{w:g}.png")
    if round_trip is not None:
        results[ROUND_TRIP] = round_trip_ceiling(round_trip, prompts, seeds=seeds)
    if out_dir is not None:
        (out_dir / "readings.json").write_text(json.dumps(readings, indent=1))
        (out_dir / "accuracy.json").write_text(json.dumps({str(k): v for k, v in results.items()}, indent=2))
    return results


def round_trip_ceiling(round_trip, prompts: Sequence[dict], seeds: int = 2, chunk: int = 48) -> dict:
    """{split: {attribute: accuracy}} of true renderings of the prompts after ``round_trip`` (list of PIL images
    → list of PIL images; the model's VAE encode → decode): what the analyzer reads when the UNet is perfect,
    the most any generated image can score through this VAE."""
    from .render import render

    jobs = [(p, render({a: p[a] for a in ATTRIBUTES}, np.random.default_rng([i, k])))
            for i, p in enumerate(prompts) for k in range(seeds)]
    scored = []
    for start in range(0, len(jobs), chunk):
        part = jobs[start:start + chunk]
        scored += [(p, analyze(image)) for (p, _), image in zip(part, round_trip([image for _, image in part]))]
    return accuracy(scored)


def table(results: dict) -> str:
    """Markdown: one row per (guidance or the VAE round trip, split), one column per attribute."""
    lines = ["| guidance | prompts | " + " | ".join(ATTRIBUTES) + " |", "|---|---|" + "---:|" * len(ATTRIBUTES)]
    for w, by_split in results.items():
        for split, acc in by_split.items():
            name = w if isinstance(w, str) else f"{w:g}"
            lines.append(f"| {name} | {split} | " + " | ".join(f"{100 * acc[a]:.1f}%" for a in ATTRIBUTES) + " |")
    return "\n".join(lines)
