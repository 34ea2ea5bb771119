"""The paraphrase prompt set: valid, fixed, phrased as the captioner never phrases, scored per phrasing."""

import json

import numpy as np

from latentdiff.shapes.captions import POSITION_LABELS, POSITION_PHRASES, make_caption, parse_caption
from latentdiff.shapes.evaluate import evaluate
from latentdiff.shapes.paraphrase import PHRASINGS, accuracy_by_phrasing, paraphrase_set
from latentdiff.shapes.world import ATTRIBUTES, check_attributes, is_held_out, sample_attributes
from test_evaluate import FakePipe


def test_the_set_is_fixed_valid_and_uses_every_phrasing_in_both_splits():
    prompts = paraphrase_set(48, 24)
    assert prompts == paraphrase_set(48, 24) and len(prompts) == 72
    for p in prompts:
        check_attributes({a: p[a] for a in ATTRIBUTES})
        assert is_held_out(p) == (p["split"] == "heldout")
        for a in ("shape", "color", "size", "background"):  # every attribute is said
            assert p[a] in p["caption"], (a, p["caption"])
        said = POSITION_LABELS[p["position"]] + POSITION_PHRASES[p["position"]]
        assert any(phrase in p["caption"] for phrase in said), p["caption"]
    for split in ("seen", "heldout"):
        assert {p["phrasing"] for p in prompts if p["split"] == split} == set(PHRASINGS)
    pairs = {(p["color"], p["background"]) for p in prompts}
    assert ("white", "black") in pairs and ("black", "white") in pairs


def test_no_paraphrase_is_a_caption_the_captioner_writes():
    rng = np.random.default_rng(0)
    captions = set()
    for _ in range(30000):
        captions.add(make_caption(sample_attributes(rng, "train"), rng)[0])
    prompts = paraphrase_set(200, 100, seed=7)
    assert not captions & {p["caption"] for p in prompts}
    # and the training captions' own reader gets several of them wrong: they are not its phrasing
    wrong = sum(parse_caption(p["caption"]) != {a: p[a] for a in ATTRIBUTES} for p in prompts)
    assert wrong > len(prompts) // 4


def test_scores_per_phrasing(tmp_path):
    prompts = paraphrase_set(16, 8)
    evaluate(FakePipe(prompts), prompts, [3.0], seeds=2, out_dir=tmp_path)
    perfect = accuracy_by_phrasing(json.loads((tmp_path / "readings.json").read_text()), prompts)
    assert set(perfect[3.0]) == set(PHRASINGS) and all(v == 1.0 for v in perfect[3.0].values())
    evaluate(FakePipe(prompts, corrupt={"size": "small"}), prompts, [3.0], seeds=1, out_dir=tmp_path)
    half = accuracy_by_phrasing(json.loads((tmp_path / "readings.json").read_text()), prompts)[3.0]
    for name, value in half.items():  # the size is read wrong on exactly the large objects
        asked = [p for p in prompts if p["phrasing"] == name]
        assert value == 1 - sum(p["size"] == "large" for p in asked) / (len(ATTRIBUTES) * len(asked))
