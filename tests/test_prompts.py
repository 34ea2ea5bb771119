"""Prompt encoding: chunks of the encoder's window (long prompts, BREAK), A1111 emphasis weights, clip skip."""

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline
from tiny import save_tiny

from latentdiff.models import load_components
from latentdiff.models.tokenizer import build_clip_tokenizer
from latentdiff.pipelines import Pipeline
from latentdiff.pipelines.prompts import (
    chunk_count,
    emphasize,
    encode_prompts,
    hidden_states,
    prompt_chunks,
)

SD_TOKENIZER = None


def sd_tokenizer():
    """Stable Diffusion's CLIP tokenizer: a 77-token context, 75 tokens of text per chunk."""
    global SD_TOKENIZER
    SD_TOKENIZER = SD_TOKENIZER or build_clip_tokenizer(77)
    return SD_TOKENIZER


@pytest.fixture(scope="module")
def deep(tmp_path_factory):
    """A tiny SD model whose text encoder has 3 layers (16-token context: 14 tokens of text per chunk)."""
    return save_tiny(tmp_path_factory.mktemp("deep") / "model", text_layers=3)


@pytest.fixture(scope="module")
def components(deep):
    return load_components(deep, device="cpu")


def single_window(c, prompts):
    """Today's (and diffusers') encoding: one padded, truncated window per prompt."""
    batch = c.tokenizer(prompts, padding="max_length", max_length=c.tokenizer.model_max_length, truncation=True,
                        return_tensors="pt")
    with torch.no_grad():
        return c.text_encoder(batch.input_ids)[0]


def test_one_chunk_is_bit_identical_to_a_single_window(components):
    prompts = ["a red circle on a blue background", "", "two green squares, one small", "café: naïve (text)"]
    expected = single_window(components, prompts)  # the same batch: batch size changes float rounding
    assert torch.isfinite(expected).all()
    assert torch.equal(encode_prompts(components, prompts, syntax="plain"), expected)
    assert torch.equal(encode_prompts(components, prompts, syntax="plain", max_chunks=None), expected)
    a1111 = prompts[:3]  # the last one has brackets: text in plain, emphasis in a1111
    assert torch.equal(encode_prompts(components, a1111, syntax="a1111"), single_window(components, a1111))


def test_weight_one_equals_the_plain_words_exactly(components):
    plain = encode_prompts(components, ["a red circle"], syntax="a1111")
    for weighted in ("a (red:1) circle", "a (red:1.0) circle", "(a red circle:1)", "a red circle BREAK"):
        assert torch.equal(encode_prompts(components, [weighted], syntax="a1111"), plain), weighted


def test_a_weight_scales_only_its_tokens_rows_then_the_mean_is_restored(components):
    """emphasize = rows × weights, then × (mean before / mean after); checked against the encoder's rows."""
    c = components
    ids = c.tokenizer(["a red circle"], padding="max_length", max_length=16, return_tensors="pt").input_ids
    with torch.no_grad():
        z = hidden_states(c.text_encoder, ids, None)  # (1, 16, 32)
    weights = torch.ones(1, 16)
    weights[0, 2] = 1.5  # 'red' (after the start token and 'a')
    out = emphasize(z, weights)
    k = z.mean() / (z * weights[..., None]).mean()
    expected = z * weights[..., None] * k
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(out.mean(), z.mean(), rtol=1e-5, atol=1e-7)
    ratio = out / z  # k everywhere except the weighted row, 1.5 k there
    assert torch.allclose(ratio[0, 2], 1.5 * k, rtol=1e-5) and not torch.allclose(ratio[0, 2], k, rtol=1e-3)
    others = torch.cat([ratio[0, :2], ratio[0, 3:]])
    torch.testing.assert_close(others, torch.full_like(others, float(k)), rtol=1e-5, atol=1e-6)
    # the same through the whole encoder path: '(red:1.5)' changes the embedding of 'a red circle' that way
    weighted = encode_prompts(c, ["a (red:1.5) circle"], syntax="a1111")
    torch.testing.assert_close(weighted, out, rtol=1e-6, atol=1e-7)
    assert not torch.equal(encode_prompts(c, ["a (red:1.5) circle"], syntax="plain"), weighted)  # brackets as text


def test_a_150_token_prompt_takes_two_chunks_and_break_forces_one():
    tok = sd_tokenizer()
    long = " ".join(["red"] * 150)
    chunks, dropped = prompt_chunks(tok, long)
    assert [len(c.tokens) for c in chunks] == [75, 75] and dropped == []
    assert chunk_count(tok, " ".join(["red"] * 75)) == 1 and chunk_count(tok, " ".join(["red"] * 76)) == 2
    chunks, _ = prompt_chunks(tok, "a red circle BREAK a blue square", "a1111")
    assert [tok.decode(c.tokens) for c in chunks] == ["a red circle", "a blue square"]
    assert chunk_count(tok, "BREAK a blue square", "a1111") == 2  # an empty first chunk, as A1111
    assert chunk_count(tok, "a red circle BREAK", "a1111") == 1
    assert chunk_count(tok, "a red circle BREAK", "plain") == 1  # plain: BREAK is a word


def test_a_full_chunk_is_cut_after_its_last_comma_when_it_is_near():
    tok = sd_tokenizer()
    words = ["red"] * 60 + [","] + ["blue"] * 20  # the comma is token 61 of 81: 14 tokens before the end
    chunks, _ = prompt_chunks(tok, " ".join(words))
    assert [len(c.tokens) for c in chunks] == [61, 20]
    assert tok.decode(chunks[0].tokens).endswith("red ,") and set(tok.decode(chunks[1].tokens).split()) == {"blue"}
    far = ["red"] * 50 + [","] + ["blue"] * 30  # 24 tokens back: too far, the chunk is filled
    assert [len(c.tokens) for c in prompt_chunks(tok, " ".join(far))[0]] == [75, 6]
    weighted, _ = prompt_chunks(tok, "(" + " ".join(words) + ":1.2)", "a1111")
    assert [len(c.tokens) for c in weighted] == [61, 20] and set(weighted[1].weights) == {1.2}


def test_truncating_to_one_chunk_fills_it_and_drops_the_rest():
    tok = sd_tokenizer()
    words = ["red"] * 60 + [","] + ["blue"] * 20
    (chunk,), dropped = prompt_chunks(tok, " ".join(words), max_chunks=1)
    assert len(chunk.tokens) == 75 and len(dropped) == 6  # no comma backtracking in the last allowed chunk


def test_a_long_prompt_uses_every_token_and_matches_diffusers_given_the_chunks(deep, components):
    """A 20-token prompt is two chunks of the tiny model's 14; the image equals diffusers' pipeline given the two
    windows encoded separately and concatenated (B, 2·16, D), and changing any word changes the image."""
    words = "a big red circle and a small blue square on a white background with a thin green line under it".split()
    assert len(words) == 20 and chunk_count(components.tokenizer, " ".join(words)) == 2
    pipe = Pipeline(components)
    settings = dict(steps=2, guidance=5.0, seed=3, sampler="ddim")
    ours = np.asarray(pipe(" ".join(words), **settings)[0])
    first, second = " ".join(words[:14]), " ".join(words[14:])
    embeds = torch.cat([single_window(components, [first]), single_window(components, [second])], dim=1)
    negative = torch.cat([single_window(components, [""])] * 2, dim=1)
    theirs = diffusers_image(deep, prompt_embeds=embeds, negative_prompt_embeds=negative, steps=2, guidance=5.0, seed=3)
    assert theirs.std() > 5
    assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 1
    # every word changed in turn, all in one batch with the same seed (each 2 chunks, so no padding differs)
    prompts = [" ".join(words)] + [" ".join(words[:i] + ["zebra"] + words[i + 1:]) for i in range(len(words))]
    cfg = pipe.settings(**settings)
    images = pipe.decode(pipe.sample(prompts, [3] * len(prompts), cfg), prompts, [3] * len(prompts), cfg)
    base = np.asarray(images[0].image)
    for i, image in enumerate(images[1:]):
        assert not np.array_equal(np.asarray(image.image), base), f"word {i} ({words[i]}) ignored"


def diffusers_image(path, *, steps, guidance, seed, **embeddings):
    pipe = StableDiffusionPipeline.from_pretrained(path, safety_checker=None)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(num_inference_steps=steps, guidance_scale=guidance, generator=torch.Generator().manual_seed(seed),
               **embeddings)
    return np.asarray(out.images[0])


def clip_skip_rule(c, prompt, skip):
    """A1111's clip skip from the text encoder's hidden states: the skip-th from the end, final layer norm."""
    ids = c.tokenizer([prompt], padding="max_length", max_length=16, return_tensors="pt").input_ids
    with torch.no_grad():
        states = c.text_encoder(ids, output_hidden_states=True).hidden_states
        return c.text_encoder.final_layer_norm(states[-skip])


@pytest.mark.parametrize("skip", [2, 3])
def test_clip_skip_matches_diffusers_given_the_rules_embeddings(deep, components, skip):
    prompt, negative = "a red circle on a blue background", "blurry"
    rule = clip_skip_rule(components, prompt, skip)
    assert torch.isfinite(rule).all()
    torch.testing.assert_close(encode_prompts(components, [prompt], clip_skip=skip), rule, rtol=0, atol=0)
    theirs = diffusers_image(deep, prompt_embeds=rule, negative_prompt_embeds=clip_skip_rule(components, negative, skip),
                             steps=6, guidance=6.0, seed=5)
    assert theirs.std() > 5
    ours = np.asarray(Pipeline(components)(prompt, negative_prompt=negative, clip_skip=skip, steps=6, guidance=6.0,
                                           seed=5, sampler="ddim")[0])
    assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 1


def test_clip_skips_give_different_images_and_bad_values_are_refused(components):
    pipe = Pipeline(components)
    images = [np.asarray(pipe("a red circle", clip_skip=k, steps=4, seed=1)[0]) for k in (1, 2, 3)]
    assert not np.array_equal(images[0], images[1]) and not np.array_equal(images[1], images[2])
    for bad in (0, 4, 1.5):
        with pytest.raises(ValueError, match=r"^clip_skip=.* must be an integer from 1 \(off\) to 3"):
            pipe.settings(clip_skip=bad)
    with pytest.raises(ValueError, match=r"^prompt_syntax='a1112' is not one of 'a1111', 'plain'"):
        pipe.settings(prompt_syntax="a1112")


def test_a_batch_pads_its_prompts_and_negative_to_the_same_chunks(components):
    pipe = Pipeline(components)
    long = "a big red circle and a small blue square on a white background with a thin green line"
    cfg = pipe.settings(negative_prompt="blurry", guidance=4.0)
    denoiser = pipe.denoiser(["a red circle", long], cfg)
    assert denoiser.both.shape == (4, 32, 32)  # [uncond × 2, cond × 2], two chunks of 16 each
    assert pipe.chunk_count("a red circle", cfg) == 1 and pipe.chunk_count(long, cfg) == 2
    alone = pipe.denoiser(["a red circle"], cfg)
    assert alone.both.shape == (2, 16, 32)


def test_malformed_syntax_is_read_as_a1111_reads_it_with_a_warning(components, caplog):
    import logging

    with caplog.at_level(logging.WARNING, logger="latentdiff"):
        unclosed = encode_prompts(components, ["a (red circle"], syntax="a1111")
    assert "unmatched bracket" in caplog.text and "'a (red circle'" in caplog.text
    assert torch.equal(unclosed, encode_prompts(components, ["a (red circle)"], syntax="a1111"))


def test_a_job_batches_only_prompts_of_the_same_chunk_count(components):
    """So every image of a job is made again alone from its PNG: a batch pads its prompts to the longest."""
    from pathlib import Path

    from latentdiff.pipelines.jobs import Task, batches

    pipe = Pipeline(components)
    cfg = pipe.settings()
    long = "a big red circle and a small blue square on a white background with a thin green line"
    prompts = ["a", "b", long, long, "c"]
    work = [Task(pipe.settings(seed=i), p, Path(f"{i}.png")) for i, p in enumerate(prompts)]
    runs = list(batches(work, 8, group=lambda task: pipe.chunk_count(task.prompt, cfg)))
    assert [[t.prompt[:1] for t in run] for run in runs] == [["a", "b"], ["a", "a"], ["c"]]
    assert len(list(batches(work, 8))) == 1


def test_training_captions_take_up_to_max_chunks_cached_or_not(components, dataset, tmp_path):
    """data.max_chunks: a long caption is encoded in chunks (cut beyond the limit); a batch pads to its longest
    with the empty prompt's chunk, the same numbers from the cache as encoded on the fly; caption dropout
    replaces every chunk."""
    from dataclasses import replace

    from latentdiff.training.data import Transform, scan_dataset
    from latentdiff.training.inputs import TrainingInputs
    from latentdiff.training.objective import drop_captions

    long = "a big red circle and a small blue square on a white background with a thin green line under it"
    items = scan_dataset(dataset).items[:2]
    items = [replace(items[0], captions=(long,)), replace(items[1], captions=("a red circle",))]
    samples = [(0, 0), (0, 1)]
    for max_chunks, width in ((1, 16), (2, 32)):
        fly = TrainingInputs(items, Transform(32), components, seed=0, max_chunks=max_chunks)
        cached = TrainingInputs(items, Transform(32), components, seed=0, cache_dir=tmp_path / f"c{max_chunks}",
                                max_chunks=max_chunks)
        cached.build_cache()
        _, text = fly.batch(samples, torch.Generator().manual_seed(0))
        _, from_cache = cached.batch(samples, torch.Generator().manual_seed(0))
        assert text.shape == from_cache.shape == (2, width, 32)
        torch.testing.assert_close(from_cache, text, rtol=1e-5, atol=1e-6)
        expected = encode_prompts(components, [long, "a red circle"], max_chunks=max_chunks)
        torch.testing.assert_close(text, expected, rtol=1e-5, atol=1e-6)
        dropped = drop_captions(text, fly.empty, 1.0, torch.Generator())
        torch.testing.assert_close(dropped, fly.empty.repeat(max_chunks, 1).expand(2, -1, -1))
    torch.testing.assert_close(encode_prompts(components, [long], max_chunks=2)[0, 16:],
                               encode_prompts(components, [" ".join(long.split()[14:])])[0])
