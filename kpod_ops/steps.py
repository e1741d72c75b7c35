"""Rationale segmentation into steps, answer-marker removal, and token-to-step alignment.

KPOD indexes everything by rationale steps (method spec §4): the mask learner's weights, the step
difficulties and the loss start ``p_{c_i+1}``. Splitting is **lossless** (``"".join(steps) ==
rationale``) so token spans can be read from character offsets, and a step never ends inside a
number (``3.5``, ``110*.3``, ``$1.50``).
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence

from .errors import bad_input

RULES = ("auto", "period", "newline")

# Answer markers, tried in this order; the last occurrence of the first marker found wins.
DEFAULT_ANSWER_MARKERS: tuple[str, ...] = (
    "####",
    "Therefore, the answer is",
    "So the answer is",
    "The answer is",
    "the answer is",
)

# Words whose trailing "." does not end a sentence (compared case-insensitively).
ABBREVIATIONS = frozenset("mr mrs ms dr st jr sr prof vs e.g i.e approx fig eq".split())

_PERIOD_END = re.compile(r"\.[\"')\]]*(?=\s|$)")
_WORD_BEFORE = re.compile(r"([A-Za-z][A-Za-z.]*)$")
_ENUM_LINE = re.compile(r"[ \t]*\(?\d{1,3}")


def _check_text(rationale: object, argument: str = "rationale") -> str:
    if not isinstance(rationale, str):
        raise bad_input(argument, "a str", type(rationale).__name__)
    if rationale == "":
        raise bad_input(argument, "a non-empty string", "''")
    return rationale


def _period_boundaries(text: str) -> list[int]:
    cuts = []
    for m in _PERIOD_END.finditer(text):
        dot = m.start()
        word = _WORD_BEFORE.search(text, max(0, dot - 12), dot)
        if word is not None and word.group(1).lower().rstrip(".") in ABBREVIATIONS:
            continue
        line_start = text.rfind("\n", 0, dot) + 1
        if _ENUM_LINE.fullmatch(text, line_start, dot) is not None:  # "1. First ..." list markers
            continue
        cuts.append(m.end())
    return cuts


def _newline_boundaries(text: str) -> list[int]:
    # A boundary is the start of a whitespace run that contains a newline and lies between content.
    return [m.start() for m in re.finditer(r"(?<=\S)[^\S\n]*\n\s*(?=\S)", text)]


def _nonempty_lines(text: str) -> int:
    return sum(1 for line in text.split("\n") if line.strip())


def resolve_rule(rationale: str, rule: str = "auto") -> str:
    """The concrete rule ``split_steps`` uses: ``"auto"`` is newline with >= 2 non-empty lines."""
    if rule not in RULES:
        raise bad_input("rule", f"one of {RULES}", repr(rule))
    if rule == "auto":
        return "newline" if _nonempty_lines(rationale) >= 2 else "period"
    return rule


def step_boundaries(rationale: str, rule: str = "auto") -> list[int]:
    """Character offsets where steps 2..n start (sorted, strictly inside ``rationale``)."""
    text = _check_text(rationale)
    concrete = resolve_rule(text, rule)
    cuts = _newline_boundaries(text) if concrete == "newline" else _period_boundaries(text)
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

    ``"period"`` splits after a "." (plus closing quotes/brackets) followed by whitespace or the
    end, except after abbreviations and list numbers; leading whitespace goes to the next step.
    ``"newline"`` splits at line breaks between non-empty lines (blank lines go to the next step).
    ``"auto"`` uses newline when the rationale has at least two non-empty lines, else period.
    """
    cuts = [0, *step_boundaries(rationale, rule), len(rationale)]
    return [rationale[a:b] for a, b in zip(cuts[:-1], cuts[1:])]


def split_answer(text: str, markers: Sequence[str] = DEFAULT_ANSWER_MARKERS) -> tuple[str, str | None]:
    """Split ``text`` into (rationale, answer part) at the last occurrence of an answer marker.

    The answer part starts at the marker (e.g. ``"#### 72"``); it is None when no marker occurs, in
    which case the whole text is the rationale. Trailing whitespace of the rationale is dropped.
    """
    if not isinstance(text, str):
        raise bad_input("text", "a str", type(text).__name__)
    for marker in markers:
        at = text.rfind(marker)
        if at >= 0:
            return text[:at].rstrip(), text[at:].strip()
    return text.rstrip(), None


def assign_tokens(offsets: Sequence[tuple[int, int]], segment_starts: Sequence[int]) -> list[int]:
    """Segment index of every token: the segment that contains the token's first character.

    ``segment_starts`` are the sorted character offsets where segments begin (the first is 0).
    Tokens without characters (special tokens, offsets ``(s, s)``) take their start; the result is
    made non-decreasing so segments stay contiguous even if a tokenizer reports odd offsets.
    """
    out: list[int] = []
    last = 0
    for start, _end in offsets:
        seg = max(bisect.bisect_right(segment_starts, start) - 1, 0)
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
