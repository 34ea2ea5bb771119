"""Prompt emphasis syntax: AUTOMATIC1111 (stable-diffusion-webui) attention weights, or plain text.

An independent implementation that gives the same (text, weight) runs as A1111's ``parse_prompt_attention``,
its quirks included, so prompts copied from the webui mean the same here.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

SYNTAXES = ("a1111", "plain")
BREAK_TEXT = "BREAK"
BREAK_WEIGHT = -1.0
BREAK: tuple[str, float] = (BREAK_TEXT, BREAK_WEIGHT)  # the piece that marks a chunk break

ROUND = 1.1
SQUARE = 1 / 1.1  # A1111 multiplies by this constant; x / 1.1 can differ in the last bit, which changes merging
_SPECIAL = "\\()[]:"
_ESCAPABLE = "()[]\\"
# \w-lookarounds are \b here; the whitespace around the word goes with it
_BREAK_WORD = re.compile(r"\s*(?<!\w)BREAK(?!\w)\s*")


def _tokens(text: str) -> Iterator[tuple[str, str]]:
    """(kind, source text) tokens; kind is one of ( [ ) ] weight escape text."""
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            # a backslash before anything but ( ) [ ] \ is dropped, not kept
            literal = text[i + 1] if i + 1 < n and text[i + 1] in _ESCAPABLE else ""
            yield "escape", literal
            i += 1 + len(literal)
        elif c in "()[]":
            yield c, c
            i += 1
        elif c == ":":
            end = _weight_end(text, i)
            yield ("weight", text[i:end]) if end else ("text", c)
            i = end or i + 1
        else:
            j = i + 1
            while j < n and text[j] not in _SPECIAL:
                j += 1
            yield "text", text[i:j]
            i = j


def _weight_end(text: str, i: int) -> int:
    """The index after ``:<spaces><sign?><digits and dots><spaces>)`` starting at ``i``; 0 if there is none."""
    n, j = len(text), i + 1
    while j < n and text[j].isspace():  # str.isspace and str.isdecimal are re's \s and \d
        j += 1
    if j < n and text[j] in "+-":
        j += 1
    digits = j
    while j < n and (text[j] == "." or text[j].isdecimal()):
        j += 1
    while digits < j < n and text[j].isspace():
        j += 1
    return j + 1 if digits < j < n and text[j] == ")" else 0


def parse_attention(text: str) -> list[tuple[str, float]]:
    """Runs of ``text`` with their A1111 attention weights, adjacent equal weights merged.

    Exactly A1111's ``parse_prompt_attention``:

    - ``(x)`` multiplies the weight of x by 1.1, ``((x))`` by 1.1², and ``(x:w)`` by w, where w is an optional
      sign and digits/dots (``-1``, ``.5``, ``2.``), spaces allowed around it (``(x: 1.2 )``); nested
      multipliers multiply. ``[x]`` multiplies by 1/1.1. A w that is not a number (``.``, ``1.2.3``), on which
      A1111 fails, is read as text and the bracket as a plain ``)`` (×1.1); :func:`malformed` reports it.
    - ``\\(``, ``\\)``, ``\\[``, ``\\]``, ``\\\\`` are literal characters; a backslash before anything else is
      dropped (``a\\b`` gives ``ab``), as A1111 does.
    - A ``:`` that does not start ``:w)`` is literal text; so is ``:w)`` when no ``(`` is open.
    - Round and square brackets are matched separately, each ``)`` with the last open ``(`` and each ``]``
      with the last open ``[`` (so ``([a)]`` gives a weight 1). An unmatched ``)`` or ``]`` is literal text;
      an unclosed ``(`` or ``[`` applies its multiplier to everything after it up to the end.
    - The whole upper-case word ``BREAK``, with the whitespace around it eaten, is a chunk break: the piece
      ``("BREAK", -1.0)``. Inside brackets the multipliers apply to that -1 too (``(a BREAK b)`` has
      ``("BREAK", -1.1)``), which is then no break (``is_break``), as in A1111.
    - Adjacent runs with equal weights are merged (empty runs, e.g. around a BREAK, are kept otherwise);
      a prompt with no text at all (``""``, ``"()"``) gives ``[("", 1.0)]``.
    """
    pieces: list[list] = []  # [text, weight], mutable: a closing bracket rescales every piece since its opening
    rounds: list[int] = []
    squares: list[int] = []

    def scale(start: int, factor: float) -> None:
        for piece in pieces[start:]:
            piece[1] *= factor

    for kind, source in _tokens(text):
        if kind == "(":
            rounds.append(len(pieces))
        elif kind == "[":
            squares.append(len(pieces))
        elif kind == "weight" and rounds:
            number = source[1:-1].strip()
            try:
                factor = float(number)
            except ValueError:  # A1111 fails on the prompt; here the weight is kept as text, the bracket closes as ')'
                pieces.append([source[:-1], 1.0])
                factor = ROUND
            scale(rounds.pop(), factor)
        elif kind == ")" and rounds:
            scale(rounds.pop(), ROUND)
        elif kind == "]" and squares:
            scale(squares.pop(), SQUARE)
        elif kind == "text":
            parts = _BREAK_WORD.split(source)
            for k, part in enumerate(parts):
                if k:
                    pieces.append(list(BREAK))
                pieces.append([part, 1.0])
        else:  # an escape, or a bracket or weight with nothing open to close
            pieces.append([source, 1.0])
    # unclosed brackets: all round ones, outermost first, then all square ones (the order of the products matters)
    for start in rounds:
        scale(start, ROUND)
    for start in squares:
        scale(start, SQUARE)

    merged: list[tuple[str, float]] = []
    for piece_text, weight in pieces:
        if merged and merged[-1][1] == weight:
            merged[-1] = (merged[-1][0] + piece_text, merged[-1][1])
        else:
            merged.append((piece_text, float(weight)))
    return merged or [("", 1.0)]


def parse_plain(text: str) -> list[tuple[str, float]]:
    """The whole text at weight 1.0: no syntax at all."""
    return [(text, 1.0)]


def parse(text: str, syntax: str) -> list[tuple[str, float]]:
    """``text`` parsed with the named syntax, one of ``SYNTAXES``."""
    if syntax == "a1111":
        return parse_attention(text)
    if syntax == "plain":
        return parse_plain(text)
    raise ValueError(f"unknown prompt syntax {syntax!r}; choose one of {', '.join(SYNTAXES)}")


def is_break(piece: tuple[str, float]) -> bool:
    """Whether a parsed piece is a chunk break (A1111's test: text 'BREAK' and weight exactly -1)."""
    return piece[0] == BREAK_TEXT and piece[1] == BREAK_WEIGHT


def malformed(text: str) -> bool:
    """Whether ``text`` has a bracket A1111 leaves unmatched (a stray ``)`` or ``]``, an unclosed ``(`` or ``[``)
    or a weight that is not a number: what the caller warns about (the prompt is still read, as described)."""
    open_round = open_square = 0
    stray = False
    for kind, source in _tokens(text):
        if kind == "(":
            open_round += 1
        elif kind == "[":
            open_square += 1
        elif kind in (")", "weight"):
            stray |= not open_round
            if kind == "weight" and open_round:
                try:
                    float(source[1:-1].strip())
                except ValueError:
                    stray = True
            open_round = max(open_round - 1, 0)
        elif kind == "]":
            stray |= not open_square
            open_square = max(open_square - 1, 0)
    return stray or open_round > 0 or open_square > 0
