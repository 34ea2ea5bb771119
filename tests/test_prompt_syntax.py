"""A1111 prompt emphasis syntax: weights, escapes, BREAK, unbalanced brackets, the plain syntax."""

import pytest

from latentdiff.pipelines.prompt_syntax import (
    BREAK,
    SYNTAXES,
    is_break,
    malformed,
    parse,
    parse_attention,
    parse_plain,
)

UP, DOWN = 1.1, 1 / 1.1

CASES = [
    # A1111's doctest examples
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", UP), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", UP)]),
    (r"\(literal\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", UP)]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [("a ", 1.0), ("house", 1.573), (" ", UP), ("on", 1.0), (" a ", UP), ("hill", 0.55), (", sun, ", UP),
      ("sky", 1.4641), (".", UP)]),
    # nesting
    ("((a))", [("a", UP**2)]),
    ("(((a)))", [("a", UP**3)]),
    ("[a]", [("a", DOWN)]),
    ("[[a]]", [("a", DOWN**2)]),
    ("(a:1.3)", [("a", 1.3)]),
    ("((a:1.3))", [("a", 1.3 * UP)]),
    ("((a:1.3) b)", [("a", 1.3 * UP), (" b", UP)]),
    ("[(a:2)]", [("a", 2 * DOWN)]),
    ("(a [b] c)", [("a ", UP), ("b", 1.0), (" c", UP)]),
    ("([a])", [("a", 1.0)]),
    ("([a)]", [("a", 1.0)]),  # ( and [ are matched separately, so crossing pairs still close
    # weights
    ("(a:-1)", [("a", -1.0)]),
    ("(a:.5)", [("a", 0.5)]),
    ("(a:+2.)", [("a", 2.0)]),
    ("(a: 1.2 )", [("a", 1.2)]),
    ("(a::1.2)", [("a:", 1.2)]),
    ("(a:0)", [("a", 0.0)]),
    # colons that are text
    ("a:b", [("a:b", 1.0)]),
    ("(a:b)", [("a:b", UP)]),
    ("(a:1.5", [("a:1.5", UP)]),
    ("a:1.5)", [("a:1.5)", 1.0)]),
    # malformed
    ("[a", [("a", DOWN)]),
    ("a (b", [("a ", 1.0), ("b", UP)]),
    ("a)", [("a)", 1.0)]),
    ("a]", [("a]", 1.0)]),
    ("(a)b)", [("a", UP), ("b)", 1.0)]),
    (")(a", [(")", 1.0), ("a", UP)]),
    ("((a)", [("a", UP**2)]),
    # escapes
    (r"\(a\)", [("(a)", 1.0)]),
    (r"\[a\]", [("[a]", 1.0)]),
    ("a\\\\b", [("a\\b", 1.0)]),
    (r"(\()", [("(", UP)]),
    ("a\\b", [("ab", 1.0)]),  # a backslash before anything else is dropped (A1111 does this)
    ("(a)\\", [("a", UP), ("", 1.0)]),
    # BREAK
    ("BREAK", [("", 1.0), BREAK, ("", 1.0)]),
    ("BREAK a", [("", 1.0), BREAK, ("a", 1.0)]),
    ("a BREAK b", [("a", 1.0), BREAK, ("b", 1.0)]),
    ("a BREAK", [("a", 1.0), BREAK, ("", 1.0)]),
    ("a\tBREAK\n b", [("a", 1.0), BREAK, ("b", 1.0)]),
    ("a,BREAK,b", [("a,", 1.0), BREAK, (",b", 1.0)]),
    ("a BREAK BREAK b", [("a", 1.0), BREAK, ("", 1.0), BREAK, ("b", 1.0)]),
    ("(a) BREAK b", [("a", UP), ("", 1.0), BREAK, ("b", 1.0)]),
    ("(a BREAK b)", [("a", UP), ("BREAK", -UP), ("b", UP)]),  # scaled, so no longer a break
    ("BREAKfast", [("BREAKfast", 1.0)]),
    ("a break b", [("a break b", 1.0)]),
    ("BREAK_1", [("BREAK_1", 1.0)]),
    # no text
    ("", [("", 1.0)]),
    ("()", [("", 1.0)]),
    ("[]", [("", 1.0)]),
    ("(:1.5)", [("", 1.0)]),
]


@pytest.mark.parametrize("prompt, expected", CASES, ids=[repr(p) for p, _ in CASES])
def test_parse_attention(prompt, expected):
    got = parse_attention(prompt)
    assert [text for text, _ in got] == [text for text, _ in expected]
    assert [weight for _, weight in got] == pytest.approx([weight for _, weight in expected])
    assert all(isinstance(weight, float) for _, weight in got)


def test_break_marker():
    assert BREAK == ("BREAK", -1.0)
    pieces = parse_attention("a BREAK b")
    assert [is_break(p) for p in pieces] == [False, True, False]
    assert not any(is_break(p) for p in parse_attention("(a BREAK b)"))
    assert not is_break(("BREAK", 1.0))


@pytest.mark.parametrize("prompt, expected", [
    ("(a:.)", [("a:.", 1.1)]), ("(a:1.2.3)", [("a:1.2.3", 1.1)]), ("((a:..5))", [("a:..5", 1.1 * 1.1)]),
    ("x (a: 1.2.3 ) y", [("x ", 1.0), ("a: 1.2.3 ", 1.1), (" y", 1.0)]),
])
def test_weight_that_is_no_number_is_text_and_the_bracket_closes(prompt, expected):
    """A1111 fails on these prompts; we read the weight as text (and say so through ``malformed``)."""
    assert parse_attention(prompt) == [(t, pytest.approx(w)) for t, w in expected]
    assert malformed(prompt)


def test_weight_that_is_no_number_outside_brackets_is_text():
    assert parse_attention("a:.)") == [("a:.)", 1.0)]


@pytest.mark.parametrize("prompt, expected", [
    ("", False), ("a (b) [c] ((d:1.2))", False), (r"\(a\] \\", False), ("([a)]", False), ("(a:.)", True),
    ("(a", True), ("[a", True), ("a)", True), ("a]", True), ("a:1.5)", True), ("(a))", True), ("(a)]", True),
])
def test_malformed(prompt, expected):
    assert malformed(prompt) is expected


def test_plain_and_parse():
    prompt = r"a (b:1.5) [c] BREAK \d"
    assert parse_plain(prompt) == [(prompt, 1.0)]
    assert parse(prompt, "plain") == [(prompt, 1.0)]
    assert parse(prompt, "a1111") == parse_attention(prompt)
    assert parse("", "plain") == [("", 1.0)]
    assert SYNTAXES == ("a1111", "plain")


def test_unknown_syntax_names_the_choices():
    with pytest.raises(ValueError, match="a1111, plain"):
        parse("(a)", "compel")
