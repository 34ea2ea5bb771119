"""Prompt-to-prompt attention control: faithful processors, the paper's edits, local blending, restore."""

import pytest
import torch

from latentdiff.core.guidance import CFGDenoiser, UNetModel
from latentdiff.core.sampling import ddim_step
from latentdiff.edit.alignment import refinement_mapper, word_positions
from latentdiff.edit.attention import AttentionController, PromptToPromptProcessor
from latentdiff.models import load_components
from latentdiff.pipelines.prompts import encode_prompts

STEPS = 4


@pytest.fixture(scope="module")
def tiny(tiny_models):
    return load_components(tiny_models[("epsilon", 8)], device="cpu")


def controller(tiny, source="a red circle", target="a red circle", **kwargs):
    return AttentionController(tiny.tokenizer, source, target, STEPS, **kwargs)


@torch.inference_mode()
def run_edit(tiny, control, source, target, scale=3.0):
    """Two-branch DDIM sampling [source, target] with the controller's hooks; the latents after every step."""
    schedule = tiny.schedule
    cond, uncond = encode_prompts(tiny, [source, target]), encode_prompts(tiny, ["", ""])
    denoiser = CFGDenoiser(UNetModel(tiny.unet), cond, uncond, scale)  # UNet batch [u_src, u_tgt, c_src, c_tgt]
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)).repeat(2, 1, 1, 1)
    timesteps = schedule.timesteps(STEPS)
    stride = schedule.num_train_timesteps // STEPS
    trace = []
    for i, t in enumerate(timesteps):
        if control is not None:
            control.begin_step(i)
        out = denoiser(x, t)
        x = ddim_step(x, out, schedule.alpha_bar(t), schedule.alpha_bar(t - stride), schedule.prediction_type)
        if control is not None:
            x = control.after_step(i, x)
        trace.append(x)
    return torch.stack(trace)  # (steps, 2, C, h, w)


@torch.inference_mode()
def unet_output(tiny, prompts=("a red circle", "a blue circle", "a red circle", "a blue circle")):
    x = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    return tiny.unet(x, 500, encoder_hidden_states=encode_prompts(tiny, list(prompts)), return_dict=False)[0]


def test_processor_without_edit_equals_diffusers_default(tiny):
    reference = unet_output(tiny)
    control = controller(tiny, cross_replace=0.0, self_replace=0.0)
    with control.installed(tiny.unet):
        assert all(isinstance(p, PromptToPromptProcessor) for p in tiny.unet.attn_processors.values())
        control.begin_step(0)
        ours = unet_output(tiny)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)


def _attention_parts(attn, hidden, context):
    """Probabilities (B, heads, Q, K), values, computed by hand from the module's weights."""
    q = attn.head_to_batch_dim(attn.to_q(hidden))
    k = attn.head_to_batch_dim(attn.to_k(context))
    v = attn.head_to_batch_dim(attn.to_v(context))
    probs = attn.get_attention_scores(q, k)
    return probs.view(hidden.shape[0], attn.heads, *probs.shape[1:]), v


def _attend(attn, probs, v):
    out = torch.bmm(probs.flatten(0, 1), v)
    return attn.to_out[0](attn.batch_to_head_dim(out))


@torch.inference_mode()
def test_processor_edits_follow_the_paper(tiny):
    """Refinement + re-weighting (cross-attention) and injection (self-attention) against hand-edited probabilities."""
    block = tiny.unet.down_blocks[0].attentions[0].transformer_blocks[0]
    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(4, 64, block.attn1.query_dim, generator=g)  # (B, Q, C): [u_src, u_tgt, c_src, c_tgt]
    context = encode_prompts(tiny, ["", "", "a red circle", "a big red circle"])
    control = controller(tiny, "a red circle", "a big red circle", cross_replace=0.5, self_replace=0.5,
                         reweight={"big": 2.0})
    assert control.mode == "refine"
    processor = PromptToPromptProcessor(control)
    # Hand-built alignment: target [BOS, a, big, red, circle, EOS, pad…] ← source [BOS, a, red, circle, EOS, pad…].
    mapper = torch.tensor([0, 1, 0, 2, 3, 4] + list(range(5, 15)))
    alphas = torch.tensor([1.0, 1, 0, 1, 1, 1] + [1.0] * 10)
    equalizer = torch.ones(16)
    equalizer[2] = 2.0

    probs, v = _attention_parts(block.attn2, hidden, context)
    for step, replaced in ((0, True), (3, False)):  # ⌊0.5·4⌋ = 2 replace steps; re-weighting at every step
        expected = probs.clone()
        target = probs[2][..., mapper] * alphas + probs[3] * (1 - alphas) if replaced else probs[3]
        expected[3] = target * equalizer
        control.begin_step(step)
        torch.testing.assert_close(processor(block.attn2, hidden, context), _attend(block.attn2, expected, v))
    assert torch.equal(expected[:3], probs[:3])  # source and unconditional rows are untouched

    probs, v = _attention_parts(block.attn1, hidden, hidden)
    expected = probs.clone()
    expected[3] = probs[2]
    control.begin_step(1)
    torch.testing.assert_close(processor(block.attn1, hidden), _attend(block.attn1, expected, v))
    control.begin_step(2)
    torch.testing.assert_close(processor(block.attn1, hidden), _attend(block.attn1, probs, v))


def test_identical_prompts_with_full_injection_give_the_source(tiny):
    control = controller(tiny, cross_replace=1.0, self_replace=1.0)
    assert control.mode == "replace"
    with control.installed(tiny.unet):
        trace = run_edit(tiny, control, "a red circle", "a red circle")
    torch.testing.assert_close(trace[:, 1], trace[:, 0], atol=1e-6, rtol=0)
    assert control._maps == {}  # attention maps are stored only for local blending


def test_reweight_changes_only_the_edited_branch(tiny):
    def run(reweight):
        control = controller(tiny, "a red circle", "a blue circle", reweight=reweight)
        with control.installed(tiny.unet):
            return run_edit(tiny, control, "a red circle", "a blue circle")

    plain, unit, double = run(None), run({"blue": 1.0}), run({"blue": 2.0})
    assert torch.equal(unit, plain)
    torch.testing.assert_close(double[:, 0], plain[:, 0], atol=1e-6, rtol=0)
    assert (double[-1, 1] - plain[-1, 1]).abs().max() > 1e-3


def test_word_swap_needs_equal_token_counts_and_words_must_exist(tiny):
    with pytest.raises(ValueError, match=r"^word swap needs prompts with the same number of tokens \(3 vs 4\); "
                                         r"use --mode refine or reword$"):
        controller(tiny, "a red circle", "a big red circle", mode="replace")
    with pytest.raises(ValueError, match="'green'"):
        controller(tiny, "a red circle", "a blue circle", reweight={"green": 2.0})
    with pytest.raises(ValueError, match="'square'"):
        controller(tiny, "a red circle", "a blue circle", blend_words=["square"])
    with pytest.raises(ValueError, match="mode='swap'"):
        controller(tiny, mode="swap")


def test_refinement_alignment_and_word_positions(tiny):
    tok = tiny.tokenizer
    mapper, alphas = refinement_mapper(tok, "a red circle", "a big red circle")  # a word added: "big" is new
    assert mapper[:6].tolist() == [0, 1, 0, 2, 3, 4] and alphas[:6].tolist() == [1, 1, 0, 1, 1, 1]
    assert mapper[6:].tolist() == list(range(5, 15)) and alphas[6:].eq(1).all()  # padding onto padding
    mapper, alphas = refinement_mapper(tok, "a big red circle", "a red circle")  # a word removed
    assert mapper[:5].tolist() == [0, 1, 3, 4, 5] and alphas.eq(1).all()
    assert word_positions(tok, "a big red circle, red", "red") == [3, 6]
    assert word_positions(tok, "a squircle", "squircle") == [2, 3]  # one word, two BPE tokens
    assert word_positions(tok, "a redness", "red") == []


def test_blend_mask_from_word_maps():
    """Source map peaked at one 4×4 cell, target map empty: pool 3×3, upsample ×2, normalise, threshold."""
    from latentdiff.models.tokenizer import build_clip_tokenizer

    control = AttentionController(build_clip_tokenizer(16), "a red circle", "a blue circle", STEPS,
                                  blend_words=["circle"])
    maps = torch.zeros(2, 4, 4)
    maps[0, 0, 0] = 1.0
    maps[0, 3, 3] = 0.2  # below the 0.3 threshold after normalisation
    control._maps = {16: maps.view(2, 16)}
    expected = torch.zeros(8, 8)
    expected[:4, :4] = 1.0  # the 2×2 pooled neighbourhood of (0, 0), upsampled
    assert torch.equal(control.blend_mask((8, 8))[0, 0], expected)


def test_local_blend_copies_the_source_outside_the_mask_and_remove_restores(tiny):
    original = dict(tiny.unet.attn_processors)
    reference = unet_output(tiny)
    control = controller(tiny, "a red circle", "a blue circle", blend_words=["circle"], blend_resolution=8,
                         blend_threshold=0.99)  # random weights: near-flat maps
    seen = []

    def after_step(i, latents):
        out = AttentionController.after_step(control, i, latents)
        mask = control.blend_mask(latents.shape[-2:])[0, 0].bool()  # (h, w)
        assert torch.equal(out[0], latents[0])
        assert torch.equal(out[1][:, ~mask], latents[0][:, ~mask])
        assert torch.equal(out[1][:, mask], latents[1][:, mask])
        seen.append(mask.float().mean().item())
        return out

    control.after_step = after_step
    control.install(tiny.unet)
    run_edit(tiny, control, "a red circle", "a blue circle")
    assert len(seen) == STEPS and any(0 < s < 1 for s in seen)  # a mask that is neither empty nor everything
    control.remove()
    assert all(tiny.unet.attn_processors[name] is p for name, p in original.items())
    assert torch.equal(unet_output(tiny), reference)
