"""Final-answer extraction and numeric comparison, shared by data filtering and evaluation."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from ..steps import DEFAULT_ANSWER_MARKERS

# A minus sign (ASCII or U+2212) counts only when it is not a subtraction ("10-5" is 10 and 5, "is -5" is -5);
# a fraction "3/4" is one number (not 3), kept as written and compared by its value.
_NUMBER = re.compile(r"(?:(?<![\w).])[-\u2212])?\$?(?:\d+/\d+(?!\.\d)|(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)")


def _clean_number(raw: str) -> str:
    s = raw.replace("$", "").replace(",", "").replace(" ", "").replace("\u2212", "-")
    if "/" in s:
        return s
    if s.startswith("-."):
        s = "-0" + s[1:]
    elif s.startswith("."):
        s = "0" + s
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return s if s not in ("", "-", "-0") else "0"


def extract_answer(text: str, markers: Sequence[str] = DEFAULT_ANSWER_MARKERS) -> str | None:
    """The final numeric answer in ``text`` as a normalised string ("1,234.50" -> "1234.5"; a fraction
    stays a fraction: "3/4").

    Looks after the last answer marker (``####``, "the answer is", ...) first, and falls back to the
    last number in the text; None when there is no number at all.
    """
    if not isinstance(text, str):
        return None
    for marker in markers:
        at = text.rfind(marker)
        if at >= 0:
            found = _NUMBER.search(text, at + len(marker))
            if found is not None:
                return _clean_number(found.group(0))
    numbers = _NUMBER.findall(text)
    return _clean_number(numbers[-1]) if numbers else None


def parse_number(text: object) -> float | None:
    """``text`` as a float (commas, ``$`` and surrounding space allowed); None if it is not one."""
    if isinstance(text, bool):
        return None
    if isinstance(text, (int, float)):
        return float(text)
    if not isinstance(text, str):
        return None
    m = _NUMBER.fullmatch(text.strip().rstrip("."))
    if m is None:
        return None
    cleaned = _clean_number(m.group(0))
    try:
        if "/" in cleaned:
            top, bottom = cleaned.split("/")
            return float(top) / float(bottom) if float(bottom) != 0 else None
        return float(cleaned)
    except ValueError:
        return None


def answers_match(predicted: object, gold: object, *, rel_tol: float = 1e-6, abs_tol: float = 1e-6) -> bool:
    """True when two answers are the same number (or, if either is not a number, the same text)."""
    a, b = parse_number(predicted), parse_number(gold)
    if a is not None and b is not None:
        return math.isclose(a, b, rel_tol=rel_tol, abs_tol=abs_tol)
    if predicted is None or gold is None:
        return False
    return str(predicted).strip().lower() == str(gold).strip().lower()
