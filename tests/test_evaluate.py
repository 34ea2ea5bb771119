"""The shapes-world evaluator scores what the analyzer reads against what the prompt asked for."""

import numpy as np

from latentdiff.pipelines import Generated
from latentdiff.shapes.evaluate import canonical_caption, evaluate, prompt_set, table
from latentdiff.shapes.render import render
from latentdiff.shapes.world import ATTRIBUTES, HELD_OUT


class FakePipe:
    """Returns a true rendering of each caption's attributes, optionally with one attribute changed."""

    def __init__(self, prompts, corrupt=None):
        self.by_caption = {p["caption"]: p for p in prompts}
        self.corrupt = corrupt

    def generate(self, captions, guidance, num_images, seed, progress, **settings):
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


def test_round_trip_ceiling_reads_true_renderings_through_the_given_round_trip():
    from PIL import Image, ImageFilter

    from latentdiff.shapes.evaluate import ROUND_TRIP, round_trip_ceiling

    prompts = prompt_set(8, 4)
    seen_images = []

    def identity(images):
        seen_images.extend(images)
        return images

    perfect = round_trip_ceiling(identity, prompts, seeds=2, chunk=5)
    assert len(seen_images) == 24 and all(acc == 1.0 for accs in perfect.values() for acc in accs.values())
    blank = round_trip_ceiling(lambda images: [Image.new("RGB", i.size, (128, 128, 128)) for i in images], prompts)
    assert blank["seen"]["shape"] < 0.5 and blank["seen"]["color"] < 0.5
    blurred = round_trip_ceiling(lambda images: [i.filter(ImageFilter.BoxBlur(3)) for i in images], prompts)
    assert blurred["seen"]["shape"] < perfect["seen"]["shape"]
    assert f"| {ROUND_TRIP} | seen | 100.0% |" in table({ROUND_TRIP: perfect})


def test_vae_round_trip_of_the_model_matches_encode_then_decode(tiny_models):
    import torch
    from diffusers import AutoencoderKL

    from latentdiff.models import load_components, vae_round_trip

    path = tiny_models[("v_prediction", 4)]
    images = [render(p, np.random.default_rng(i)) for i, p in enumerate(prompt_set(2, 1))]
    out = vae_round_trip(load_components(path, device="cpu"), images)
    vae = AutoencoderKL.from_pretrained(path, subfolder="vae")
    pixels = torch.from_numpy(np.stack([np.asarray(i) for i in images])).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():  # diffusers alone: the posterior mean decoded, no scaling factor in between
        expected = ((vae.decode(vae.encode(pixels).latent_dist.mean).sample / 2 + 0.5).clamp(0, 1) * 255).round()
    assert [o.size for o in out] == [(64, 64)] * 3
    diff = np.abs(np.stack([np.asarray(o, dtype=int) for o in out]) - expected.permute(0, 2, 3, 1).int().numpy())
    assert diff.max() <= 1
