"""The shapes-world evaluator scores what the analyzer reads against what the prompt asked for."""

import numpy as np

from latentdiff.pipeline import Generated
from latentdiff.shapes.evaluate import canonical_caption, evaluate, prompt_set, table
from latentdiff.shapes.render import render
from latentdiff.shapes.world import ATTRIBUTES, HELD_OUT


class FakePipe:
    """Returns a true rendering of each caption's attributes, optionally with one attribute changed."""

    def __init__(self, prompts, corrupt=None):
        self.by_caption = {p["caption"]: p for p in prompts}
        self.corrupt = corrupt

    def generate(self, captions, guidance, num_images, steps, seed, progress):
        out = []
        for i, caption in enumerate(c for c in captions for _ in range(num_images)):
            attrs = {a: self.by_caption[caption][a] for a in ATTRIBUTES}
            if self.corrupt:
                attrs = dict(attrs, **self.corrupt)
            image = render(attrs, np.random.default_rng(seed + i))
            out.append(Generated(image, {"seed": seed + i}))
        return out


def test_prompt_set_is_fixed_and_splits_seen_from_heldout():
    prompts = prompt_set(10, 6)
    assert prompts == prompt_set(10, 6)
    assert [p["split"] for p in prompts].count("heldout") == 6
    for p in prompts:
        assert ((p["shape"], p["color"]) in HELD_OUT) == (p["split"] == "heldout")
        assert p["caption"] == canonical_caption(p) and p["color"] in p["caption"] and p["shape"] in p["caption"]


def test_perfect_images_score_100_and_a_wrong_attribute_scores_low(tmp_path):
    prompts = prompt_set(8, 4)
    perfect = evaluate(FakePipe(prompts), prompts, [1.0, 3.0], seeds=2, out_dir=tmp_path)
    assert all(acc == 1.0 for by_split in perfect.values() for accs in by_split.values() for acc in accs.values())
    wrong = evaluate(FakePipe(prompts, corrupt={"position": "center"}), prompts, [3.0], seeds=1)
    seen = wrong[3.0]["seen"]
    assert seen["position"] < 0.5 and seen["shape"] == 1.0 and seen["color"] == 1.0
    assert (tmp_path / "grid-guidance-3.png").is_file() and (tmp_path / "accuracy.json").is_file()
    assert "| 3 | seen | 100.0% |" in table(perfect)
