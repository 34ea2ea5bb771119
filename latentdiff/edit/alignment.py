"""Token bookkeeping for prompt-to-prompt: prompt tokens, word → token positions, and the source ↔ target
token alignment behind the word-swap and refinement edits (Hertz et al. 2022, §3.2).

Positions index the padded token sequence the text encoder sees (length ``tokenizer.model_max_length``):
0 is the BOS token, then the prompt's BPE tokens, its EOS token, and padding.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from ..pipelines.prompts import tokenize

# Needleman–Wunsch scores of the paper's aligner: a gap costs nothing, so a changed word is aligned as
# "source word dropped, target word inserted" (a new token) rather than as a mismatched pair.
MATCH, MISMATCH, GAP = 1, -1, 0


def prompt_tokens(tokenizer, prompt: str) -> list[int]:
    """Token ids of one prompt without padding: BOS, BPE tokens, EOS (truncated as the encoder truncates)."""
    ids, mask = tokenize(tokenizer, [prompt])
    return ids[0][mask[0].bool()].tolist()


def word_positions(tokenizer, prompt: str, word: str) -> list[int]:
    """Positions of every occurrence of ``word`` (one or more words, possibly several BPE tokens) in ``prompt``.

    Matching is on token ids, so "red" matches "red" and "red," but not "redness" (CLIP's end-of-word
    marker differs). The BOS at position 0 never matches. Empty when the word is not in the prompt.
    """
    needle = tokenizer(word, add_special_tokens=False).input_ids
    tokens = prompt_tokens(tokenizer, prompt)
    if not needle:
        return []
    n = len(needle)
    return [start + k for start in range(1, len(tokens) - n + 1) if tokens[start : start + n] == needle
            for k in range(n)]


def align(source: Sequence[int], target: Sequence[int]) -> list[Optional[int]]:
    """Global alignment (Needleman–Wunsch): for each target token, its source position, or None when new."""
    n, m = len(source), len(target)
    score = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n + 1):
        for j in range(m + 1):
            if i == 0 or j == 0:
                score[i][j] = GAP * (i + j)
                continue
            pair = MATCH if source[i - 1] == target[j - 1] else MISMATCH
            score[i][j] = max(score[i - 1][j - 1] + pair, score[i - 1][j] + GAP, score[i][j - 1] + GAP)
    # Trace back from the end, preferring a match, then a target insertion, then a source deletion.
    mapping: list[Optional[int]] = [None] * m
    i, j = n, m
    while i > 0 or j > 0:
        if i > 0 and j > 0 and source[i - 1] == target[j - 1] and score[i][j] == score[i - 1][j - 1] + MATCH:
            mapping[j - 1] = i - 1
            i, j = i - 1, j - 1
        elif j > 0 and score[i][j] == score[i][j - 1] + GAP:
            j -= 1  # target token j − 1 is new
        elif i > 0 and score[i][j] == score[i - 1][j] + GAP:
            i -= 1  # source token i − 1 was dropped
        else:
            i, j = i - 1, j - 1  # mismatched pair: the target token is new
    return mapping


def refinement_mapper(tokenizer, source_prompt: str, target_prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(mapper, alphas), each (L,): target position j takes source position mapper[j] where alphas[j] = 1.

    Tokens new in the target have alpha 0 (they keep their own attention). Padding after the target's
    EOS maps onto the source's padding in order, as far as the source has positions left.
    """
    length = tokenizer.model_max_length
    source, target = prompt_tokens(tokenizer, source_prompt), prompt_tokens(tokenizer, target_prompt)
    mapper = torch.zeros(length, dtype=torch.long)
    alphas = torch.ones(length)
    for j, i in enumerate(align(source, target)):
        if i is None:
            alphas[j] = 0.0
        else:
            mapper[j] = i
    pad = torch.arange(length - len(target))
    mapper[len(target):] = (len(source) + pad).clamp(max=length - 1)
    return mapper, alphas


def replacement_mapper(tokenizer, source_prompt: str, target_prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(mapper, alphas) of a word swap: prompts with equal token counts align position by position."""
    n_source = len(prompt_tokens(tokenizer, source_prompt))
    n_target = len(prompt_tokens(tokenizer, target_prompt))
    if n_source != n_target:  # counted without BOS/EOS, as a user counts them
        raise ValueError(
            f"word swap needs prompts with the same number of tokens ({n_source - 2} vs {n_target - 2}); "
            "use --mode refine or reword"
        )
    length = tokenizer.model_max_length
    return torch.arange(length), torch.ones(length)
