"""``arith-cot``: procedural multi-step arithmetic word problems with teacher-style rationales.

Small enough for a tiny student to learn on a 2-core CPU within minutes: operands of 1–2 digits,
results below 1000, 2–5 steps (one per line, each step's result feeding the next), filler words
around the keypoint numbers and operations, and 1–2 distractor numbers in the question that do not
affect the answer (listed in ``metadata["distractors"]``). Splits are decided by a hash of the
question: test and train are disjoint. ``wording="varied"`` sets each operation in a place and a
time of day that the rationale restates (words that cost a student loss but never decide the answer,
so keypoints become a minority of the rationale's tokens). The ``arith-text`` warm-up corpus (``load_arith_text``)
teaches the language and the arithmetic around these problems but holds no problem or rationale.
"""

from __future__ import annotations

import random
from typing import Any

from ..errors import bad_input
from .example import CoTExample
from .splits import bucket, check_count, check_split

NAMES = (
    ("Tom", "he"),
    ("Anna", "she"),
    ("Ben", "he"),
    ("Mia", "she"),
    ("Sam", "he"),
    ("Lily", "she"),
    ("Max", "he"),
    ("Emma", "she"),
)
ITEMS = ("apple", "pencil", "marble", "sticker", "cookie", "book", "card", "stone")
FRIENDS = ("Leo", "Zoe", "Kai", "Ivy")
FILLERS = ("Then", "Next", "After that", "Later")
WORDINGS = ("plain", "varied")
# wording="varied": where and when each operation happens (only words of the tiny student's vocabulary)
PLACES = ("market", "park", "shop", "school", "library", "farm", "garden", "beach")
WEATHER = ("sunny", "rainy", "cloudy", "windy", "cold", "warm")
_TEST, _TRAIN = range(0, 20), range(40, 100)  # buckets 20..39 are unused (kept so splits stay stable)


def _pools(split: str) -> range:
    return _TEST if split == "test" else _TRAIN


def _op(rng: random.Random, cur: int) -> tuple[str, int, int] | None:
    choices = ["add", "sub", "mul", "div"]
    rng.shuffle(choices)
    for op in choices:
        if op == "add" and cur + 1 < 1000:
            x = rng.randint(1, min(20, 999 - cur))
            return op, x, cur + x
        if op == "sub" and cur >= 2:
            x = rng.randint(1, min(cur - 1, 20))
            return op, x, cur - x
        if op == "mul" and cur * 2 < 1000 and cur <= 99:
            x = rng.randint(2, min(4, 999 // cur))
            return op, x, cur * x
        if op == "div":
            divisors = [d for d in (2, 3, 4, 5) if cur % d == 0 and cur // d >= 1]
            if divisors:
                x = rng.choice(divisors)
                return op, x, cur // x
    return None


def _sentences(op: str, x: int, cur: int, new: int, who: str, pron: str, item: str, friend: str, filler: str) -> tuple[str, str]:
    """(question sentence, rationale step) for one operation."""
    p = pron.capitalize()
    if op == "add":
        return (f"{p} buys {x} more {item}s.", f"{filler}, {pron} buys {x} more, so {pron} has {cur} + {x} = {new} {item}s.")
    if op == "sub":
        return (
            f"{p} gives {x} {item}s to {friend}.",
            f"{filler}, {pron} gives away {x}, so {pron} has {cur} - {x} = {new} {item}s.",
        )
    if op == "mul":
        return (
            f"{p} then gets {x} times as many {item}s as {pron} has.",
            f"{filler}, {pron} gets {x} times as many, so {pron} has {cur} * {x} = {new} {item}s.",
        )
    return (
        f"{p} splits the {item}s into {x} equal bags and keeps one bag.",
        f"{filler}, {pron} keeps one of {x} equal bags, so {pron} has {cur} / {x} = {new} {item}s.",
    )


def _context(rng: random.Random) -> str:
    """Where and when an operation happens (``wording="varied"``): "at the park on a rainy day"."""
    place, weather = rng.choice(PLACES), rng.choice(WEATHER)
    return rng.choice((f"at the {place}", f"on a {weather} day", f"at the {place} on a {weather} day",
                       f"on a {weather} day at the {place}"))


def _varied_sentences(op: str, x: int, cur: int, new: int, pron: str, item: str, friend: str, filler: str,
                      context: str) -> tuple[str, str]:
    """(question sentence, rationale step) for one operation set in ``context``, which both restate."""
    p = pron.capitalize()
    his = "his" if pron == "he" else "her"
    if op == "add":
        return (f"{context.capitalize()}, {pron} buys {x} more {item}s.",
                f"{filler}, {context}, {pron} buys {x} more {item}s, so now {pron} has {cur} + {x} = {new} {item}s in total.")
    if op == "sub":
        return (f"{p} gives {x} {item}s to {friend} {context}.",
                f"{filler}, {context}, {pron} gives {x} of {his} {item}s away to {friend}, so {pron} still has "
                f"{cur} - {x} = {new} {item}s left.")
    if op == "mul":
        return (f"{context.capitalize()}, {pron} gets {x} times as many {item}s as {pron} has.",
                f"{filler}, {context}, {pron} gets {x} times as many {item}s as before, so now {pron} has "
                f"{cur} * {x} = {new} {item}s.")
    return (f"{p} splits the {item}s into {x} equal bags {context} and keeps one bag.",
            f"{filler}, {context}, {pron} splits all {his} {item}s into {x} equal bags and keeps one bag, so now "
            f"{pron} has {cur} / {x} = {new} {item}s.")


def make_problem(rng: random.Random, max_steps: int = 5, max_distractors: int = 2, wording: str = "plain") -> tuple[str, str, str, dict[str, Any]]:
    """One problem: (question, rationale, answer, metadata) with 2..max_steps steps and
    min(1, max_distractors)..max_distractors distractor numbers, in ``wording`` (one of ``WORDINGS``)."""
    who, pron = rng.choice(NAMES)
    item = rng.choice(ITEMS)
    other = rng.choice([i for i in ITEMS if i != item])
    friend = rng.choice(FRIENDS)
    n_steps = rng.randint(2, max_steps)
    start = rng.randint(2, 20)
    cur = start
    q_parts, steps, ops, operands, results = [], [], [], [], []
    for k in range(n_steps):
        op, x, new = _op(rng, cur)  # cur >= 1 always, so "add" is always possible
        filler = "First" if k == 0 else rng.choice(FILLERS)
        if wording == "plain":
            q, s = _sentences(op, x, cur, new, who, pron, item, friend, filler)
        else:
            q, s = _varied_sentences(op, x, cur, new, pron, item, friend, filler, _context(rng))
        q_parts.append(q)
        steps.append(s)
        ops.append(op)
        operands.append(x)
        results.append(new)
        cur = new
    distractor_sentences = [
        lambda d: f"{who} is {d} years old.",
        lambda d: f"{pron.capitalize()} also has {d} {other}s.",
        lambda d: f"{friend} has {d} {item}s at home.",
    ]
    rng.shuffle(distractor_sentences)
    distractors = []
    for make in distractor_sentences[: rng.randint(min(1, max_distractors), max_distractors)]:
        d = rng.randint(2, 60)
        distractors.append(d)
        q_parts.insert(rng.randint(0, len(q_parts)), make(d))
    question = f"{who} has {start} {item}s. " + " ".join(q_parts) + f" How many {item}s does {who} have now?"
    metadata = {
        "distractors": distractors,
        "start": start,
        "operations": ops,
        "operands": operands,
        "step_results": results,
    }
    return question, "\n".join(steps), str(cur), metadata


def _generate(pool: range, n: int, seed: int, split_name: str, max_steps: int = 5, max_distractors: int = 2,
              wording: str = "plain") -> list[tuple[str, str, str, dict[str, Any]]]:
    rng = random.Random(f"arith-cot/{seed}" if wording == "plain" else f"arith-cot/{wording}/{seed}")
    out, seen = [], set()
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 200 * n + 10_000:
            raise RuntimeError(f"arith-cot: could not draw {n} distinct {split_name} problems")
        problem = make_problem(rng, max_steps, max_distractors, wording)
        question = problem[0]
        if question in seen or bucket(question, "arith-cot") not in pool:
            continue
        seen.add(question)
        out.append(problem)
    return out


def load_arith_cot(split: str = "train", n: int = 1000, seed: int = 0, *, max_steps: int = 5, max_distractors: int = 2,
                   wording: str = "plain") -> list[CoTExample]:
    """``n`` arith-cot examples of ``split``; deterministic by ``seed`` (a larger ``n`` extends a smaller one).

    ``max_steps`` (2..5) and ``max_distractors`` (0..3) make an easier variant (shorter problems
    for a smaller student); the defaults are the standard set. ``wording="varied"`` sets every
    operation at a place and time that the rationale restates: the same numbers and answers' kind,
    with about twice the words per step around them.
    """
    check_split(split)
    check_count(n)
    if isinstance(max_steps, bool) or max_steps not in range(2, 6):
        raise bad_input("max_steps", "an int in [2, 5]", repr(max_steps))
    if isinstance(max_distractors, bool) or max_distractors not in range(0, 4):
        raise bad_input("max_distractors", "an int in [0, 3]", repr(max_distractors))
    if wording not in WORDINGS:
        raise bad_input("wording", f"one of {WORDINGS}", repr(wording))
    problems = _generate(_pools(split), n, seed, split, max_steps, max_distractors, wording)
    return [CoTExample(f"arith-cot-{split}-{seed}-{i}", q, r, a, m) for i, (q, r, a, m) in enumerate(problems)]


def load_arith_text(n: int = 1000, seed: int = 0) -> list[str]:
    """``n`` plain warm-up texts for a small student's language-model pre-training.

    What a pre-trained model brings, not this task's worked solutions: arithmetic facts
    (``"17 + 4 = 21."``, tables), number sense (order, counting, halves and doubles), simple
    stories in the same world (names, items, buying, giving) and other everyday text. No text
    has the question → step-by-step rationale → answer form of ``arith-cot``, and no text links a
    story to the computation it needs (see :mod:`kpod_ops.data.warmup`).
    """
    from .warmup import warmup_texts

    check_count(n)
    return warmup_texts(n, seed)
