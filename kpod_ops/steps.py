"""Rationale segmentation into steps, answer-marker removal, and token-to-step alignment.

KPOD indexes everything by rationale steps: the mask learner's weights, the step difficulties and
the loss start ``p_{c_i+1}``. Splitting is **lossless** (``"".join(steps) == rationale``) so token
spans can be read from character offsets, and a step never ends inside a number (``3.5``,
``110*.3``, ``$1.50``). The rules, and which one fits which data, are described in
``docs/method.md`` ("Step segmentation").
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence
from typing import NamedTuple

from .errors import bad_input

RULES = ("auto", "period", "newline", "paragraph")

# Answer markers, tried in this order; see ``find_answer``.
DEFAULT_ANSWER_MARKERS: tuple[str, ...] = (
    "####",
    "Therefore, the answer is",
    "So the answer is",
    "The answer is",
    "the answer is",
)

# Words whose trailing "." never ends a sentence, whatever follows (compared case-insensitively):
# titles before a name, Latin abbreviations that introduce something.
TITLES = frozenset("mr mrs ms dr prof rev hon gen capt sgt lt col e.g i.e vs cf al".split())
# Words whose trailing "." does not end a sentence before a number ("No. 5", "Jan. 3", "Fig. 2").
BEFORE_NUMBER = frozenset(
    "no nos fig figs eq eqs approx vol ch sec pp p jan feb mar apr jun jul aug sep sept oct nov dec".split()
)
# Capitalised words that continue a sentence after "a.m." / "p.m." ("at 9 a.m. Monday").
_DAY_OR_MONTH = frozenset(
    "monday tuesday wednesday thursday friday saturday sunday january february march april may june july "
    "august september october november december".split()
)
ABBREVIATIONS = TITLES | BEFORE_NUMBER | {"st", "a.m", "p.m", "etc"}
"""Every word the period rule treats as an abbreviation (lower case, without the final ".")."""

_PERIOD_END = re.compile(r"\.[\"'’”)\]]*(?=\s|$)")
_WORD_BEFORE = re.compile(r"([A-Za-z][A-Za-z.]*)$")
_PREV_WORD = re.compile(r"(\S+)\s+$")
_LIST_NUMBER = re.compile(r"\(?\d{1,2}$")
_CLOSED = re.compile(r"[.:;!?][\"'’”)\]]*$")
_STEP_LABEL = re.compile(r"(?:^|[\s(])[Ss]tep$")
_OPENERS = "\"'‘“(["


def _check_text(rationale: object, argument: str = "rationale") -> str:
    if not isinstance(rationale, str):
        raise bad_input(argument, "a str", type(rationale).__name__)
    if rationale == "":
        raise bad_input(argument, "a non-empty string", "''")
    return rationale


def _is_list_number(text: str, dot: int) -> bool:
    """The "." closes a list number ("1." / "(2." / "Step 3.") that opens a line or follows a finished sentence."""
    m = _LIST_NUMBER.search(text, max(0, dot - 3), dot)
    if m is None:
        return False
    before = text[: m.start()]
    if m.start() > 0 and not before[-1].isspace():
        return False
    head = before.rstrip(" \t")
    if _STEP_LABEL.search(head):  # "Step 2. Multiply …" opening a sentence: judge what precedes "Step"
        head = head[:-4].rstrip(" \t(")
    return head == "" or head.endswith("\n") or (_CLOSED.search(head) is not None and not head.endswith(".."))


def _next_word(text: str, start: int) -> str:
    """The word after ``start`` (skipping whitespace and opening quotes/brackets)."""
    i = start
    while i < len(text) and (text[i].isspace() or text[i] in _OPENERS):
        i += 1
    j = i
    while j < len(text) and (text[j].isalnum() or text[j] in "'’"):
        j += 1
    return text[i:j] if j > i else text[i : i + 1]


def _ends_sentence(text: str, dot: int, end: int) -> bool:
    """Whether the "." at ``dot`` (its closing quotes/brackets end at ``end``) plausibly ends a sentence."""
    if _is_list_number(text, dot):
        return False
    m = _WORD_BEFORE.search(text, max(0, dot - 12), dot)
    word = m.group(1).lower().rstrip(".") if m is not None else ""
    if word in TITLES:
        return False
    gap = text[end : len(text) - len(text[end:].lstrip())]
    nxt = _next_word(text, end)
    if not nxt:
        return True
    if "\n" in gap:
        return True
    if word == "st":  # "Main St. The" ends a sentence; "in St. Louis" does not
        prev = _PREV_WORD.search(text, max(0, m.start() - 30), m.start()) if m is not None else None
        return prev is not None and prev.group(1)[:1].isupper() and nxt[:1].isupper()
    first = nxt[0]
    if first.islower():
        return False  # "3 p.m. and", "e.g. rice", "5 ft. tall": the sentence goes on
    if first.isdigit() or first in "$#":
        return word not in BEFORE_NUMBER and not text.endswith("...", 0, dot + 1)  # "1... 2... 3"
    if first.isupper() and word in ("a.m", "p.m"):
        return nxt.lower() not in _DAY_OR_MONTH
    return True


def _period_boundaries(text: str) -> list[int]:
    return [m.end() for m in _PERIOD_END.finditer(text) if _ends_sentence(text, m.start(), m.end())]


def _newline_boundaries(text: str) -> list[int]:
    # A boundary is the start of a whitespace run that contains a newline and lies between content.
    return [m.start() for m in re.finditer(r"(?<=\S)[^\S\n]*\n\s*(?=\S)", text)]


def _nonempty_lines(text: str) -> int:
    return sum(1 for line in text.split("\n") if line.strip())


def _inner_sentence_ends(text: str) -> int:
    """Sentence ends that are not at the end of a line (so the line goes on with another sentence)."""
    count = 0
    for cut in _period_boundaries(text):
        rest = text[cut:]
        stripped = rest.lstrip(" \t")
        if stripped and not stripped.startswith(("\n", "\r")):
            count += 1
    return count


def resolve_rule(rationale: str, rule: str = "auto") -> str:
    """The concrete rule ``split_steps`` uses for this rationale (``"auto"`` resolved).

    ``"auto"``: one non-empty line → ``"period"``; several lines holding mostly one sentence each
    (GSM8K's line per equation) → ``"newline"``; lines that are paragraphs (on average at least 1.5
    sentences per line) → ``"paragraph"``, i.e. line breaks and sentence ends inside lines.
    """
    if rule not in RULES:
        raise bad_input("rule", f"one of {RULES}", repr(rule))
    if rule != "auto":
        return rule
    lines = _nonempty_lines(rationale)
    if lines < 2:
        return "period"
    return "paragraph" if 2 * _inner_sentence_ends(rationale) >= lines else "newline"


def step_boundaries(rationale: str, rule: str = "auto") -> list[int]:
    """Character offsets where steps 2..n start (sorted, strictly inside ``rationale``)."""
    text = _check_text(rationale)
    concrete = resolve_rule(text, rule)
    if concrete == "newline":
        cuts = _newline_boundaries(text)
    elif concrete == "period":
        cuts = _period_boundaries(text)
    else:
        # a sentence end just before a line break is the same boundary as the line break
        lines = _newline_boundaries(text)
        inner = [c for c in _period_boundaries(text) if text[c:].lstrip(" \t")[:1] not in ("\n", "\r", "")]
        cuts = sorted(set(lines) | set(inner))
    out: list[int] = []
    prev = 0
    for c in cuts:
        # No empty or whitespace-only steps: a fragment without content joins its predecessor.
        if 0 < c < len(text) and text[prev:c].strip() and text[c:].strip():
            out.append(c)
            prev = c
    return out


def split_steps(rationale: str, rule: str = "auto") -> list[str]:
    """Split a rationale into steps, losslessly: ``"".join(split_steps(r)) == r``.

    ``"period"`` (the paper's rule) splits after a "." (plus closing quotes/brackets) where a
    sentence plausibly ends: followed by whitespace and then the end, a line break, a capitalised
    word or a number; not after titles ("Mr.", "Dr.", "e.g.", "et al."), before a lower-case word
    ("3 p.m. and"), after "No."/month abbreviations before a number, or after a list number
    ("1. Add"). Leading whitespace goes to the next step. ``"newline"`` splits at line breaks between
    non-empty lines (blank lines go to the next step). ``"paragraph"`` does both. ``"auto"`` picks
    one per rationale, see :func:`resolve_rule`.
    """
    cuts = [0, *step_boundaries(rationale, rule), len(rationale)]
    return [rationale[a:b] for a, b in zip(cuts[:-1], cuts[1:])]


class AnswerSplit(NamedTuple):
    """A text cut at its final answer marker (see :func:`find_answer`)."""

    rationale: str
    answer: str | None  # from the marker on ("#### 72"); None without a final marker
    ambiguous: bool  # a marker also occurs inside the rationale, where it was kept as reasoning


def _ends_text(text: str, at: int, marker: str) -> bool:
    """The marker at ``at`` ends the text: what follows is one line holding at most one sentence."""
    start = at + len(marker)
    if "\n" in text[start:].strip():
        return False
    return not any(c > start and text[c:].strip() for c in _period_boundaries(text))


def find_answer(text: str, markers: Sequence[str] = DEFAULT_ANSWER_MARKERS) -> AnswerSplit:
    """Split ``text`` at the answer marker that ends it, and say whether another marker was reasoning.

    A marker counts only where it ends the text (the rest is one line of at most one sentence,
    ``"#### 72"``, ``"So the answer is 36 apples."``); "the answer is reasonable: 12 * 3 = 36.\\nSo
    he has 36 apples." is reasoning, not an answer. Markers are tried in order, each at its last
    occurrence. Trailing whitespace of the rationale is dropped.
    """
    if not isinstance(text, str):
        raise bad_input("text", "a str", type(text).__name__)
    if isinstance(markers, str) or not all(isinstance(m, str) and m for m in markers):
        raise bad_input("markers", "a sequence of non-empty strings", repr(markers)[:60])
    rationale, answer = text.rstrip(), None
    for marker in markers:
        at = text.rfind(marker)
        if at >= 0 and _ends_text(text, at, marker):
            rationale, answer = text[:at].rstrip(), text[at:].strip()
            break
    return AnswerSplit(rationale, answer, any(m in rationale for m in markers))


def split_answer(text: str, markers: Sequence[str] = DEFAULT_ANSWER_MARKERS) -> tuple[str, str | None]:
    """``(rationale, answer part)`` of :func:`find_answer`; the answer part is None without a final marker."""
    found = find_answer(text, markers)
    return found.rationale, found.answer


def assign_tokens(offsets: Sequence[tuple[int, int]], segment_starts: Sequence[int], *,
                  claim_straddling: int | None = None) -> list[int]:
    """Segment index of every token: the segment that contains the token's first character.

    ``segment_starts`` are the sorted character offsets where segments begin (the first is 0).
    Tokens without characters (special tokens, offsets ``(s, s)``) take their start; the result is
    made non-decreasing so segments stay contiguous even if a tokenizer reports odd offsets.
    ``claim_straddling``: the index of a segment that also takes a token which starts before it and
    ends inside it. For the prompt/rationale boundary: with a prompt that ends in a space, a
    tokenizer that puts spaces in front of words gives ``' First'`` the prompt's last character, yet
    it is the rationale's first word (TRL, too, starts a completion where the prompt's tokens end).
    """
    out: list[int] = []
    last = 0
    claim_at = None if claim_straddling is None else segment_starts[claim_straddling]
    for start, end in offsets:
        seg = max(bisect.bisect_right(segment_starts, start) - 1, 0)
        if claim_at is not None and start < claim_at < end:
            seg = max(seg, claim_straddling)
        last = max(last, seg)
        out.append(last)
    return out


def spans_from_assignment(assignment: Sequence[int], first: int, n_segments: int) -> list[tuple[int, int]]:
    """Half-open token ranges ``[start, end)`` of segments ``first..first+n_segments-1``.

    ``assignment`` must be non-decreasing (as ``assign_tokens`` returns); an empty segment has
    ``start == end``.
    """
    spans = []
    for k in range(first, first + n_segments):
        a = bisect.bisect_left(assignment, k)
        b = bisect.bisect_right(assignment, k)
        spans.append((a, max(a, b)))
    return spans
