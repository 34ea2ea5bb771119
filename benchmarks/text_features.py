"""How much each shapes-world attribute moves a text encoder's features (a diagnostic for the CLIP stage).

For every canonical caption over 4 colors × 9 positions × 4 shapes (size and background fixed), the
encoder's last hidden states are mean-pooled over tokens and L2-normalised. The table gives the mean cosine
similarity of caption pairs that share exactly one attribute, next to pairs that share none: an attribute
whose row is close to the "nothing shared" row is barely present in what the UNet cross-attends to.

    .venv/bin/python benchmarks/text_features.py --model weights/shapes
"""

from __future__ import annotations

import argparse
import itertools

import torch

from latentdiff.models import load_components
from latentdiff.pipelines.prompts import encode_prompts
from latentdiff.shapes.evaluate import canonical_caption
from latentdiff.shapes.world import POSITIONS, SHAPES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="weights/shapes", help="diffusers-layout folder with text_encoder/")
    args = parser.parse_args()
    components = load_components(args.model, with_unet=False, device="cpu")
    rows = [dict(size="large", color=c, shape=s, position=p, background="gray")
            for c, p, s in itertools.product(("red", "blue", "green", "yellow"), POSITIONS, SHAPES)]
    with torch.no_grad():
        states = encode_prompts(components, [canonical_caption(r) for r in rows]).float()  # (N, L, D)
    pooled = torch.nn.functional.normalize(states.mean(1), dim=-1)
    cosine = pooled @ pooled.T
    keys = ("color", "position", "shape")
    same = {k: torch.tensor([[a[k] == b[k] for b in rows] for a in rows]) for k in keys}
    off_diagonal = ~torch.eye(len(rows), dtype=torch.bool)
    print(f"model {args.model}, {len(rows)} captions\n")
    print("| caption pairs sharing | mean cosine |\n|---|---:|")
    for k in keys:
        only = same[k] & off_diagonal
        for other in keys:
            if other != k:
                only &= ~same[other]
        print(f"| only the {k} | {cosine[only].mean():.3f} |")
    none = off_diagonal & ~same["color"] & ~same["position"] & ~same["shape"]
    print(f"| nothing | {cosine[none].mean():.3f} |")


if __name__ == "__main__":
    main()
