"""Prompt-to-prompt attention control (Hertz et al. 2022, "Prompt-to-Prompt Image Editing with Cross
Attention Control") through diffusers attention processors — never by patching ``forward``.

Batch layout. The sampler denoises two branches from the same x_T, ``[source, target]`` (2, C, h, w),
and calls the UNet once per step on the classifier-free-guidance batch of 4 (guidance.CFGDenoiser's
``[uncond, cond]`` order)::

    [uncond_source, uncond_target, cond_source, cond_target]

or, without guidance (scale 1), on ``[cond_source, cond_target]``. As in the paper's code, only the
conditional half is edited: the row ``cond_target`` takes attention from the row ``cond_source``.

Per sampling step i (0-based, i = 0 the noisiest) of N:

1. cross-attention, i < ⌊cross_replace·N⌋: the target's probabilities become the source's, per
   token (word swap: position by position; refinement: through the token alignment, and tokens new in
   the target keep their own attention);
2. cross-attention, every step: re-weighting multiplies the target's probabilities of chosen words
   by their factors (the equalizer), after step 1. (The paper's code re-weights only during the
   cross-replace steps; we keep the emphasis to the end, as the re-weighting section describes it.)
3. self-attention, i < ⌊self_replace·N⌋ and at most ``SELF_REPLACE_MAX_QUERIES`` queries: the
   target's probabilities become the source's;
4. after the DDIM step, local blending (optional) keeps the edited latent equal to the source latent
   outside the region the blend words attend to.

Hooks the sampler calls: ``begin_step(i)`` before the UNet call of step i, and
``latents = after_step(i, latents)`` after the DDIM step of both branches.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator, Optional, Sequence

import torch
import torch.nn.functional as F

from .alignment import prompt_tokens, refinement_mapper, replacement_mapper, word_positions

MODES = ("auto", "replace", "refine")
SELF_REPLACE_MAX_QUERIES = 32**2  # the paper injects self-attention only in layers of ≤ 32×32 queries
BLEND_THRESHOLD = 0.3  # the paper's LocalBlend threshold on the max-normalised word map
BLEND_POOL = 3  # max-pool kernel that smooths the word map before thresholding (paper: k = 1 → 3×3)
BLEND_RESOLUTION_DIVISOR = 4  # default map side = latent side / 4: SD's 16×16 layers at 512 px


def check_fraction(value: float, named: str) -> None:
    """ValueError unless ``value`` is a fraction of the steps in [0, 1]; ``named`` is how the message names it (a
    setting ``"cross_replace="`` or a flag ``"--cross-replace "``)."""
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{named}{value!r} must be a fraction of the steps in [0, 1]")


class AttentionController:
    """Edits the target branch's attention from the source branch's, step by step (prompt-to-prompt).

    ``mode``: "replace" (word swap; prompts must have the same token count), "refine" (words added or
    removed; tokens aligned), or "auto" (replace when the token counts match, refine otherwise).
    ``reweight`` maps words of the target prompt to attention factors; ``blend_words`` (words of the
    source and/or target prompt) turns on local blending.
    """

    def __init__(
        self,
        tokenizer,
        source_prompt: str,
        target_prompt: str,
        num_steps: int,
        cross_replace: float = 0.8,
        self_replace: float = 0.4,
        reweight: Optional[dict[str, float]] = None,
        blend_words: Optional[Sequence[str]] = None,
        mode: str = "auto",
        blend_threshold: float = BLEND_THRESHOLD,
        blend_resolution: Optional[int] = None,
    ):
        if mode not in MODES:
            raise ValueError(f"mode={mode!r} is not supported; choose one of {', '.join(map(repr, MODES))}")
        if not (isinstance(num_steps, int) and num_steps >= 1):
            raise ValueError(f"num_steps={num_steps!r} must be a positive integer")
        check_fraction(cross_replace, "cross_replace=")
        check_fraction(self_replace, "self_replace=")
        if not 0.0 <= blend_threshold < 1.0:
            raise ValueError(f"blend_threshold={blend_threshold!r} must be in [0, 1)")
        self.length = tokenizer.model_max_length
        self.num_steps = num_steps
        self.cross_steps = int(cross_replace * num_steps)
        self.self_steps = int(self_replace * num_steps)
        if mode == "auto":
            same = len(prompt_tokens(tokenizer, source_prompt)) == len(prompt_tokens(tokenizer, target_prompt))
            mode = "replace" if same else "refine"
        self.mode = mode
        make_mapper = replacement_mapper if mode == "replace" else refinement_mapper
        self.mapper, self.alphas = make_mapper(tokenizer, source_prompt, target_prompt)  # (L,), (L,)

        self.equalizer = None  # (L,) factor per target token
        if reweight:
            self.equalizer = torch.ones(self.length)
            for word, factor in reweight.items():
                positions = word_positions(tokenizer, target_prompt, word)
                if not positions:
                    raise ValueError(f"reweight word {word!r} is not in the target prompt {target_prompt!r}")
                self.equalizer[positions] = float(factor)

        self.blend_weights = None  # (2, L): mean over the blend words' tokens, source row then target row
        if blend_words is not None:
            words = [blend_words] if isinstance(blend_words, str) else list(blend_words)
            if not words:
                raise ValueError("blend_words is empty; name at least one word of the prompts, or pass None")
            weights = torch.zeros(2, self.length)
            for word in words:
                found = [word_positions(tokenizer, p, word) for p in (source_prompt, target_prompt)]
                if not any(found):
                    raise ValueError(f"blend word {word!r} is in neither the source nor the target prompt")
                for row, positions in enumerate(found):
                    weights[row, positions] = 1.0
            self.blend_weights = weights / weights.sum(-1, keepdim=True).clamp(min=1.0)
        self.blend_threshold = blend_threshold
        self.blend_resolution = blend_resolution

        self.step: Optional[int] = None
        self._maps: dict[int, torch.Tensor] = {}  # query count → (2, Q) blend-word maps summed over layers/steps
        self._constants: dict = {}
        self._processor = PromptToPromptProcessor(self)
        self._previous: Optional[dict] = None
        self._unet = None

    # --- hooks the sampler calls ------------------------------------------------------------------

    def begin_step(self, i: int) -> None:
        """Call before the UNet call of sampling step i (0 = noisiest); a step that does not follow the previous
        one (step 0, or the first of an edit that skips steps) starts a new run."""
        if not 0 <= i < self.num_steps:
            raise ValueError(f"step {i} is outside the {self.num_steps} steps this controller was built for")
        if self.step is None or i <= self.step:
            self._maps = {}
        self.step = i

    def after_step(self, i: int, latents: torch.Tensor) -> torch.Tensor:
        """Local blending after the DDIM step on (2, C, h, w) [source, edited]: outside the mask, edited = source."""
        if self.blend_weights is None:
            return latents
        if latents.shape[0] != 2:
            raise ValueError(f"after_step expects (2, C, h, w) [source, edited] latents, got {tuple(latents.shape)}")
        mask = self.blend_mask(latents.shape[-2:]).bool()  # (1, 1, h, w)
        source, edited = latents[:1], latents[1:]
        # edited = source + mask·(edited − source), exact on both sides of the 0/1 mask
        return torch.cat([source, torch.where(mask, edited, source)])

    # --- local blending ---------------------------------------------------------------------------

    def blend_mask(self, size: Sequence[int]) -> torch.Tensor:
        """(1, 1, h, w) 0/1 mask: union of the source and target blend-word maps, max-normalised, thresholded."""
        h, w = int(size[0]), int(size[1])
        if not self._maps:
            raise RuntimeError("no cross-attention maps recorded; run the UNet with the controller installed first")
        wanted = self.blend_resolution or max(h // BLEND_RESOLUTION_DIVISOR, 1)
        shapes = {}
        for queries in self._maps:
            scale = math.sqrt(h * w / queries)  # latent pixels per map pixel
            mh, mw = round(h / scale), round(w / scale)
            if mh * mw == queries:
                shapes[queries] = (mh, mw)
        if not shapes:
            raise RuntimeError(f"no recorded attention map matches the latent size {h}×{w}")
        queries = min(shapes, key=lambda q: (abs(shapes[q][0] - wanted), -q))  # closest side; ties → finer
        maps = self._maps[queries].view(2, 1, *shapes[queries])  # (2, 1, mh, mw)
        maps = F.max_pool2d(maps, BLEND_POOL, stride=1, padding=BLEND_POOL // 2)
        maps = F.interpolate(maps, size=(h, w), mode="nearest")  # (2, 1, h, w)
        maps = maps / maps.amax(dim=(2, 3), keepdim=True).clamp(min=torch.finfo(maps.dtype).tiny)
        return (maps > self.blend_threshold).any(dim=0, keepdim=True).float()

    # --- the edit, called by the processor on every attention layer -------------------------------

    def _tensors(self, like: torch.Tensor):
        key = (like.device, like.dtype)
        if key not in self._constants:
            eq = None if self.equalizer is None else self.equalizer.to(like.device, like.dtype)
            self._constants[key] = (self.mapper.to(like.device), self.alphas.to(like.device, like.dtype), eq)
        return self._constants[key]

    def edit(self, probs: torch.Tensor, batch: int, is_cross: bool) -> torch.Tensor:
        """Edited attention probabilities (batch·heads, Q, K) for the batch layout of the module docstring."""
        if self.step is None:
            raise RuntimeError("call controller.begin_step(i) before each UNet call of sampling step i")
        if batch not in (2, 4):
            raise ValueError(f"prompt-to-prompt expects a UNet batch of 4 (2 branches × CFG) or 2, got {batch}")
        rows, queries, keys = probs.shape
        p = probs.view(batch, rows // batch, queries, keys)  # (B, heads, Q, K)
        src, tgt = p[batch - 2], p[batch - 1]  # cond_source, cond_target
        new = tgt
        if is_cross:
            if keys != self.length:
                raise ValueError(f"cross-attention over {keys} tokens, but the prompts were tokenized to {self.length}")
            mapper, alphas, equalizer = self._tensors(probs)
            if self.step < self.cross_steps:
                new = src if self.mode == "replace" else src[..., mapper] * alphas + tgt * (1 - alphas)
            if equalizer is not None:
                new = new * equalizer
            if self.blend_weights is not None:
                self._record(queries, src, new)
        elif self.step < self.self_steps and queries <= SELF_REPLACE_MAX_QUERIES:
            new = src
        if new is tgt:
            return probs
        return torch.cat([p[: batch - 1], new[None]]).view(rows, queries, keys)

    def _record(self, queries: int, src: torch.Tensor, tgt: torch.Tensor) -> None:
        """Add this layer's blend-word maps (the probabilities the layer used), averaged over heads."""
        weights = self.blend_weights.to(src.device, torch.float32)
        maps = torch.stack([src, tgt]).float().mean(1)  # (2, Q, K)
        maps = torch.einsum("bqk,bk->bq", maps, weights).detach()  # (2, Q)
        self._maps[queries] = self._maps[queries] + maps if queries in self._maps else maps

    # --- installing the processors ----------------------------------------------------------------

    def install(self, unet) -> dict:
        """Route every attention module of ``unet`` through this controller; returns the previous processors."""
        if self._previous is not None:
            raise RuntimeError("this controller is already installed; call remove() first")
        previous = dict(unet.attn_processors)
        unet.set_attn_processor({name: self._processor for name in previous})
        self._previous, self._unet = previous, unet
        return dict(previous)

    def remove(self, unet=None) -> None:
        """Restore exactly the processors ``install`` replaced."""
        if self._previous is None:
            return
        unet = unet if unet is not None else self._unet
        unet.set_attn_processor(dict(self._previous))  # set_attn_processor pops from the dict it is given
        self._previous, self._unet = None, None

    @contextlib.contextmanager
    def installed(self, unet) -> Iterator["AttentionController"]:
        """``with controller.installed(unet):`` — install, and restore the previous processors on exit."""
        self.install(unet)
        try:
            yield self
        finally:
            self.remove(unet)


class PromptToPromptProcessor:
    """A diffusers attention processor: ``AttnProcessor``'s computation, its probabilities edited by the controller."""

    def __init__(self, controller: AttentionController):
        self.controller = controller

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        is_cross = encoder_hidden_states is not None
        batch, sequence_length, _ = (encoder_hidden_states if is_cross else hidden_states).shape
        attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if not is_cross:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key, value = attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states)
        query, key, value = attn.head_to_batch_dim(query), attn.head_to_batch_dim(key), attn.head_to_batch_dim(value)

        probs = attn.get_attention_scores(query, key, attention_mask)  # (B·heads, Q, K)
        probs = self.controller.edit(probs, batch, is_cross)
        hidden_states = attn.batch_to_head_dim(torch.bmm(probs, value))
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))  # linear, dropout

        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor
