"""The ``arith-text`` warm-up corpus: what a small student should know before distillation.

A pre-trained model knows arithmetic facts, has a sense of numbers and reads simple stories; it has
not seen worked solutions of the task it is distilled on. The texts here give exactly that to a
tiny student in the ``arith-cot`` world, and nothing more:

- arithmetic facts and tables in the ranges ``arith-cot`` uses (``"17 + 4 = 21."``,
  ``"3 times 12 is 36."``, ``"84 / 4 = 21."``);
- number sense: comparisons, counting, halves and doubles, next and previous numbers;
- stories of one or two plain sentences (names, items, buying, giving, ages) that state facts but
  never compute them, and facts read back from the text a few sentences later ("Tom has 7 marbles.
  … How many marbles does Tom have? Tom has 7.");
- other everyday text (weather, places, days).

No text is a question followed by a step-by-step rationale and an answer, and no text ties a story
event to the equation that resolves it: that link is what distillation has to teach.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from .splits import check_count

NAMES = ("Tom", "Anna", "Ben", "Mia", "Sam", "Lily", "Max", "Emma", "Leo", "Zoe", "Kai", "Ivy")
ITEMS = ("apple", "pencil", "marble", "sticker", "cookie", "book", "card", "stone")
PLACES = ("park", "school", "shop", "garden", "library", "beach", "farm", "market")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
COLOURS = ("red", "blue", "green", "yellow", "white", "black", "brown", "orange")
ANIMALS = ("dog", "cat", "bird", "horse", "rabbit", "fish", "cow", "duck")
WEATHER = ("sunny", "rainy", "cold", "warm", "windy", "cloudy")


def _plural(item: str, k: int) -> str:
    return item if k == 1 else item + "s"


def _add_fact(rng: random.Random) -> str:
    a = rng.randint(1, 980)
    b = rng.randint(1, min(20, 999 - a))
    return rng.choice((f"{a} + {b} = {a + b}.", f"{a} plus {b} is {a + b}.", f"{b} + {a} = {a + b}."))


def _sub_fact(rng: random.Random) -> str:
    a = rng.randint(2, 999)
    b = rng.randint(1, min(20, a - 1))
    return rng.choice((f"{a} - {b} = {a - b}.", f"{a} minus {b} is {a - b}."))


def _mul_fact(rng: random.Random) -> str:
    a = rng.randint(1, 99)
    b = rng.randint(2, 4)
    return rng.choice((f"{a} * {b} = {a * b}.", f"{b} times {a} is {a * b}.", f"{a} times {b} is {a * b}."))


def _div_fact(rng: random.Random) -> str:
    b = rng.randint(2, 5)
    q = rng.randint(1, 199)
    return rng.choice((f"{q * b} / {b} = {q}.", f"{q * b} divided by {b} is {q}."))


def _table(rng: random.Random) -> str:
    op = rng.choice("+-*/")
    a = rng.randint(2, 60)
    rows = []
    for b in range(1, rng.randint(4, 7) + 1):
        if op == "+":
            rows.append(f"{a} + {b} = {a + b}.")
        elif op == "-":
            rows.append(f"{a + 20} - {b} = {a + 20 - b}.")
        elif op == "*":
            rows.append(f"{a} * {b} = {a * b}.")
        else:
            rows.append(f"{a * b} / {b} = {a}.")
    return " ".join(rows)


def _number_sense(rng: random.Random) -> str:
    a, b = rng.sample(range(1, 1000), 2)
    kind = rng.randrange(6)
    if kind == 0:
        big, small = max(a, b), min(a, b)
        return f"{big} is more than {small}, and {small} is less than {big}."
    if kind == 1:
        start = rng.randint(1, 990)
        return "Count: " + ", ".join(str(start + i) for i in range(rng.randint(4, 8))) + "."
    if kind == 2:
        h = rng.randint(1, 400)
        return f"Half of {2 * h} is {h}. Double {h} is {2 * h}."
    if kind == 3:
        return f"The number after {a} is {a + 1}. The number before {a} is {a - 1}."
    if kind == 4:
        return f"{a} has {len(str(a))} digits."
    return f"{a} is {'even' if a % 2 == 0 else 'odd'}."


def _story(rng: random.Random) -> str:
    who, other = rng.sample(NAMES, 2)
    item = rng.choice(ITEMS)
    k, m = rng.randint(1, 60), rng.randint(1, 20)
    kind = rng.randrange(6)
    if kind == 0:
        return f"{who} has {k} {_plural(item, k)}. {other} has {m} {_plural(item, m)}."
    if kind == 1:
        return f"{who} buys some {item}s at the {rng.choice(PLACES)} on {rng.choice(DAYS)}."
    if kind == 2:
        return f"{who} gives a {item} to {other}. {other} says thank you."
    if kind == 3:
        return f"{who} is {rng.randint(5, 60)} years old. {other} is {rng.randint(5, 60)} years old."
    if kind == 4:
        return f"{who} puts the {item}s into {rng.randint(2, 5)} equal bags."
    return f"{who} likes {item}s, and {other} likes {rng.choice(ITEMS)}s."


def _recall(rng: random.Random) -> str:
    """A fact, something else, then the fact read back from the text (reading comprehension)."""
    who, other = rng.sample(NAMES, 2)
    item = rng.choice(ITEMS)
    k = rng.randint(1, 99)
    fact = f"{who} has {k} {_plural(item, k)}."
    middle = rng.choice((_everyday, _number_sense))(rng)
    ask = rng.choice((f"How many {item}s does {who} have? {who} has {k}.", f"{who} still has {k} {_plural(item, k)}.",
                      f"{other} asks {who} about the {item}s. {who} says: I have {k}."))
    return f"{fact} {middle} {ask}"


def _everyday(rng: random.Random) -> str:
    who = rng.choice(NAMES)
    kind = rng.randrange(5)
    if kind == 0:
        return f"It is {rng.choice(WEATHER)} on {rng.choice(DAYS)}."
    if kind == 1:
        return f"{who} walks to the {rng.choice(PLACES)} with a {rng.choice(COLOURS)} bag."
    if kind == 2:
        return f"The {rng.choice(ANIMALS)} sleeps in the {rng.choice(PLACES)}."
    if kind == 3:
        return f"{who} reads a book about a {rng.choice(COLOURS)} {rng.choice(ANIMALS)}."
    return f"There are {rng.randint(2, 12)} {rng.choice(ANIMALS)}s on the farm."


KINDS: tuple[tuple[Callable[[random.Random], str], float], ...] = (
    (_add_fact, 3.0),
    (_sub_fact, 2.0),
    (_mul_fact, 2.0),
    (_div_fact, 1.5),
    (_table, 1.0),
    (_number_sense, 2.0),
    (_story, 2.0),
    (_recall, 2.0),
    (_everyday, 1.0),
)


def warmup_text(rng: random.Random) -> str:
    """One warm-up text: 3–6 sentences of mixed kinds."""
    makers, weights = zip(*KINDS)
    return " ".join(rng.choices(makers, weights)[0](rng) for _ in range(rng.randint(3, 6)))


def warmup_texts(n: int, seed: int = 0) -> list[str]:
    """``n`` warm-up texts, deterministic by ``seed`` (a larger ``n`` extends a smaller one)."""
    check_count(n)
    rng = random.Random(f"arith-text/{seed}")
    return [warmup_text(rng) for _ in range(n)]
