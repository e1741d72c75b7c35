"""split_steps (lossless, number-safe), split_answer and token assignment (S1–S3)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kpod_ops.errors import KPODInputError
from kpod_ops.steps import assign_tokens, spans_from_assignment, split_answer, split_steps, step_boundaries

NUMBER = re.compile(r"\$?\d*\.\d+|\d+(?:,\d{3})*")

words = st.sampled_from(["Tom", "has", "apples", "Mr.", "e.g.", "so", "the", "total", "is", "...", "="])
numbers = st.one_of(
    st.integers(0, 10_000).map(str),
    st.tuples(st.integers(0, 999), st.integers(0, 99)).map(lambda t: f"{t[0]}.{t[1]}"),
    st.integers(0, 99).map(lambda x: f"${x}.50"),
    st.integers(1, 9).map(lambda x: f"110*.{x}"),
)
seps = st.sampled_from([" ", " ", ". ", ".", "\n", "\n\n", ".\n", "  ", ". \n  "])
texts = st.lists(st.tuples(st.one_of(words, numbers), seps), min_size=1, max_size=25).map(lambda p: "".join(a + b for a, b in p))


@settings(max_examples=150, deadline=None)
@given(texts, st.sampled_from(["auto", "period", "newline"]))
def test_split_is_lossless_and_number_safe(text, rule):
    steps = split_steps(text, rule)
    assert "".join(steps) == text  # S1
    assert len(steps) >= 1
    assert len(steps) == 1 or all(s.strip() for s in steps)  # no empty or whitespace-only step
    cuts = set(step_boundaries(text, rule))
    for m in NUMBER.finditer(text):  # S3: no boundary strictly inside a number
        assert not any(m.start() < c < m.end() for c in cuts), (text, m.group(0))


def test_period_rule_cases():
    r = "It costs $1.50 each. Mr. Smith buys 3.5 kg, e.g. rice. Then 110*.3=33. Done."
    assert split_steps(r, "period") == [
        "It costs $1.50 each.",
        " Mr. Smith buys 3.5 kg, e.g. rice.",
        " Then 110*.3=33.",
        " Done.",
    ]
    assert split_steps("One. Two.  ", "period") == ["One.", " Two.  "]  # no whitespace-only step
    assert split_steps('He said "go." Then 2.', "period") == ['He said "go."', " Then 2."]
    assert split_steps("1. Buy eggs.\n2. Cook.", "period") == ["1. Buy eggs.", "\n2. Cook."]  # list numbers
    assert split_steps("no period here", "period") == ["no period here"]


def test_newline_and_auto_rules():
    r = "Natalia sold 48/2 = 24 clips.\nShe sold 48+24 = 72 clips.\n\n  - in total"
    assert split_steps(r) == ["Natalia sold 48/2 = 24 clips.", "\nShe sold 48+24 = 72 clips.", "\n\n  - in total"]
    assert split_steps("A is 1.\nB is 2\nC.", "period") == ["A is 1.", "\nB is 2\nC."]
    assert split_steps("A is 1.\nB is 2\nC.", "newline") == ["A is 1.", "\nB is 2", "\nC."]
    assert split_steps("A. B.\n\n") == ["A.", " B.\n\n"]  # one non-empty line: auto uses period


def test_split_steps_bad_input():
    with pytest.raises(KPODInputError, match="rationale"):
        split_steps("")
    with pytest.raises(KPODInputError, match="rationale: expected a str"):
        split_steps(None)
    with pytest.raises(KPODInputError, match="rule"):
        split_steps("a. b.", "comma")


def test_split_answer():
    assert split_answer("a=1\nb=2\n#### 72") == ("a=1\nb=2", "#### 72")
    assert split_answer("So 3. Therefore, the answer is 3.") == ("So 3.", "Therefore, the answer is 3.")
    assert split_answer("no marker\n") == ("no marker", None)


def test_assign_tokens_and_spans():
    starts = [0, 5, 9]
    offsets = [(0, 2), (2, 5), (5, 7), (6, 9), (9, 10), (0, 0), (8, 9)]  # odd offsets stay monotone
    seg = assign_tokens(offsets, starts)
    assert seg == [0, 0, 1, 1, 2, 2, 2]
    assert spans_from_assignment(seg, 1, 2) == [(2, 4), (4, 7)]
