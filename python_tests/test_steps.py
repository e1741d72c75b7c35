"""split_steps (lossless, number-safe), split_answer and token assignment (S1–S3)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kpod_ops.errors import KPODInputError
from kpod_ops.steps import (
    assign_tokens,
    find_answer,
    resolve_rule,
    spans_from_assignment,
    split_answer,
    split_steps,
    step_boundaries,
)

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
@given(texts, st.sampled_from(["auto", "period", "newline", "paragraph"]))
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
    # "A: " + "First": the token " First" starts on the prompt's last character and is the rationale's
    offsets = [(0, 1), (1, 2), (2, 8), (8, 10)]  # "A", ":", " First", ","; the rationale starts at 3
    assert assign_tokens(offsets, [0, 3, 8]) == [0, 0, 0, 2]
    assert assign_tokens(offsets, [0, 3, 8], claim_straddling=1) == [0, 0, 1, 2]
    lone = [(0, 1), (1, 2), (2, 3), (3, 8)]  # a tokenizer with a token for the space: it stays the prompt's
    assert assign_tokens(lone, [0, 3, 8], claim_straddling=1) == [0, 0, 0, 1]


# Tricky GSM8K-style prose: each entry is the expected steps under the period rule.
PERIOD_CORPUS = [
    # times
    ["She wakes up at 6 a.m. and leaves at 7:30 a.m. for work.", " The bus takes 20 minutes."],
    ["He woke at 7 a.m.", " He then ate 2 eggs."],
    ["The store opens at 9 a.m. Monday through Friday.", " It closes at 5 P.M. on weekends."],
    ["The show starts at 8 p.m. sharp and lasts 2 hours.", " It ends at 10 p.m."],
    # numbers after abbreviations
    ["Room No. 5 has 3 beds.", " No. 6 has 4 beds."],
    ["On Jan. 5 she had $20.", " By Feb. 10 she had $35.", " She saved $35 - $20 = $15."],
    ["Smith et al. found 12 birds.", " That is 4 per day."],
    ["See Fig. 2 for the 3 boxes.", " Each box holds 4 toys."],
    # titles and "St."
    ["Mr. Lee lives on Main St.", " He walks 2 miles a day."],
    ["She drove to St. Louis.", " The trip took 3 hours."],
    ["Dr. Smith sees 8 patients, i.e. 2 per hour.", " He works 4 hours."],
    ["Mrs. Brown buys 3 pies, e.g. apple and cherry.", " Each pie costs $4."],
    # money and decimals
    ["It costs $5.", " The total is $10."],
    ["He buys 3 apples for $1.50 each.", " That costs 3 * $1.50 = $4.50."],
    ["110*.3=33.", " 33+2.5=35.5."],
    # a period before a lower-case word
    ["The tank holds 5 gal. of water and 3 gal. are used.", " So 2 gal. remain."],
    ["He has 4 apples, pears, etc. and eats 2.", " He has 2 left."],
    ["He has 4 apples, pears, etc.", " Then he eats 2."],
    # inline and line-start numbered lists
    ["1. Add 3 and 4 to get 7.", " 2. Multiply 7 by 5 to get 35.", " 3. Subtract 5 to get 30."],
    ["First: 1. Buy 2 pens.", " 2. Buy 3 pads."],
    ["(1. Add 2 and 2.)", " (2. Double it.)"],
    ["Step 1. Add 3 and 4 to get 7.", " Step 2. Multiply 7 by 5 to get 35."],
    ["He reached step 5.", " Then he rested."],
    # ellipses
    ["He waited...", " Then he bought 3 apples."],
    ["He thought... maybe 5 more.", " So 10 + 5 = 15."],
    ["Count 1... 2... 3.", " That is 3 seconds."],
    # quotes
    ['She said, "I have 5 cookies."', ' Tom said "I have 3."', " Together they have 8."],
    ['"Wait." he said to the 2 boys.', " They waited 5 minutes."],
    # sentences that start with a number
    ["The answer is 12.", " 12 + 3 = 15."],
    ["She had 5 cats.", " 3 of them were black."],
]


@pytest.mark.parametrize("expected", PERIOD_CORPUS, ids=lambda e: e[0][:30])
def test_period_rule_ends_steps_where_sentences_end(expected):
    text = "".join(expected)
    assert split_steps(text, "period") == expected
    assert not any(re.fullmatch(r"\s*\(?\d+\.\)?\s*", s) for s in split_steps(text, "period"))  # no number-only step


PARAGRAPHS = (
    "Tom buys 3 apples. Each apple costs $2.\n\n"
    "So he pays 3 * 2 = $6. He also buys a pear for $1.\n\n"
    "In total he pays 6 + 1 = $7. He has 10 - 7 = $3 left."
)
GSM8K_LINES = "Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips altogether in April and May."


def test_auto_splits_paragraphs_at_sentences_and_keeps_one_step_per_equation_line():
    assert resolve_rule(PARAGRAPHS) == "paragraph"
    steps = split_steps(PARAGRAPHS)
    assert len(steps) == 6 and "".join(steps) == PARAGRAPHS
    assert steps[2] == "\n\nSo he pays 3 * 2 = $6."
    assert split_steps(PARAGRAPHS, "paragraph") == steps
    assert resolve_rule(GSM8K_LINES) == "newline" and len(split_steps(GSM8K_LINES)) == 2
    mixed = "He has 5 apples. He eats 2.\nSo 5 - 2 = 3 are left.\nHe buys 4 more, so 3 + 4 = 7.\nHe gives 1 away: 6."
    assert resolve_rule(mixed) == "newline"  # one line with two sentences does not make paragraphs
    assert resolve_rule("One line. Two sentences.") == "period"


def test_answer_marker_counts_only_at_the_end():
    text = "Let's check if the answer is reasonable: 12 * 3 = 36.\nSo he has 36 apples."
    assert split_answer(text) == (text, None)
    assert find_answer(text).ambiguous
    both = text + "\nThe answer is 36."
    found = find_answer(both)
    assert found == (text, "The answer is 36.", True)
    assert find_answer("a=1\nb=2\n#### 72") == ("a=1\nb=2", "#### 72", False)
    assert split_answer("So the answer is 36 apples.  \n") == ("", "So the answer is 36 apples.")
    assert split_answer("The answer is 36. Then we add 2 more.") == ("The answer is 36. Then we add 2 more.", None)
    with pytest.raises(KPODInputError, match="markers"):
        find_answer("x", markers="####")
