"""A planted keypoint task with known answer-relevant tokens, for checking a mask learner.

Each rationale is a few sentences built from filler words, *relevant* clauses and *distractor*
clauses; the answer is the relevant digits in order. With ``marker="before"`` the clauses are
``"has <digit>"`` and ``"page <digit>"``, with ``marker="after"`` ``"<digit> apples"`` and
``"<digit> pages"``. Only the relevant digits decide the answer, and the distractors are digits
too (the same token ids), so token identity alone cannot separate them: a learner must use
context. ``roles`` labels every rationale token.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..data.tokenized import TokenizedExample
from ..errors import bad_input

FILLER = ("so", "then", "we", "see", "that", "it", "is", "now", "well", "also", "just", "and")
RELEVANT_MARKERS = {"before": "has", "after": "apples"}
DISTRACTOR_MARKERS = {"before": "page", "after": "pages"}
DIGITS = tuple(str(d) for d in range(10))
SPECIAL = ("<pad>", "<eos>", "Q:", "copy", "the", "counts", "A:", ".")


class WordTokenizer:
    """Whitespace tokenizer over a fixed word list (``decode``/``get_vocab`` like Hugging Face's)."""

    def __init__(self, words: tuple[str, ...]) -> None:
        self.words = tuple(dict.fromkeys(words))
        self.vocab = {w: i for i, w in enumerate(self.words)}
        self.pad_token_id, self.eos_token_id = self.vocab["<pad>"], self.vocab["<eos>"]

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, text: str) -> list[int]:
        return [self.vocab[w] for w in text.split()]

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        words = [self.words[int(i)] for i in ids]
        if skip_special_tokens:
            words = [w for w in words if not (w.startswith("<") and w.endswith(">"))]
        return " ".join(words)

    def get_vocab(self) -> dict[str, int]:
        return dict(self.vocab)


def planted_tokenizer() -> WordTokenizer:
    markers = tuple(RELEVANT_MARKERS.values()) + tuple(DISTRACTOR_MARKERS.values())
    return WordTokenizer(SPECIAL + FILLER + markers + DIGITS)


@dataclass
class PlantedTask:
    tokenizer: WordTokenizer
    examples: list[TokenizedExample]
    roles: dict[str, list[str]]  # example id -> role of each rationale token


def planted_task(
    n: int,
    *,
    seed: int = 0,
    n_relevant: int | tuple[int, int] = 2,
    n_distractors: int = 2,
    max_filler: int = 3,
    marker: str = "before",
    min_length: int = 0,
    id_prefix: str = "planted",
) -> PlantedTask:
    """``n`` examples; roles are ``relevant``, ``distractor``, ``filler``, ``marker`` or ``punct``.

    ``n_relevant`` is a count or an inclusive range ``(lo, hi)`` drawn per example; ``marker``
    puts the word that makes a digit relevant ``"before"`` or ``"after"`` it; a rationale shorter
    than ``min_length`` tokens gets extra filler words in its first clause.
    """
    if marker not in RELEVANT_MARKERS:
        raise bad_input("marker", f"one of {tuple(RELEVANT_MARKERS)}", repr(marker))
    lo, hi = (n_relevant, n_relevant) if isinstance(n_relevant, int) else n_relevant
    if not 1 <= lo <= hi:
        raise bad_input("n_relevant", "a count >= 1 or a range (lo, hi) with 1 <= lo <= hi", n_relevant)
    tok = planted_tokenizer()
    rng = np.random.default_rng(seed)
    prompt = tok.encode("Q: copy the counts A:")
    examples, roles = [], {}
    for i in range(n):
        kinds = ["relevant"] * int(rng.integers(lo, hi + 1)) + ["distractor"] * n_distractors
        rng.shuffle(kinds)
        clauses = []
        for kind in kinds:
            words = [str(rng.choice(FILLER)) for _ in range(int(rng.integers(1, max_filler + 1)))]
            role = ["filler"] * len(words)
            digit = str(rng.choice(DIGITS))
            word = (RELEVANT_MARKERS if kind == "relevant" else DISTRACTOR_MARKERS)[marker]
            words += [word, digit] if marker == "before" else [digit, word]
            role += ["marker", kind] if marker == "before" else [kind, "marker"]
            if rng.random() < 0.5:
                words.append(str(rng.choice(FILLER)))
                role.append("filler")
            clauses.append((words + ["."], role + ["punct"], digit if kind == "relevant" else None))
        short = min_length - sum(len(w) for w, _, _ in clauses)
        if short > 0:
            w0, r0, d0 = clauses[0]
            clauses[0] = ([str(rng.choice(FILLER)) for _ in range(short)] + w0, ["filler"] * short + r0, d0)
        words, role, spans = [], [], []
        for w, r, _ in clauses:
            spans.append((len(words), len(words) + len(w)))
            words += w
            role += r
        answer = [d for _, _, d in clauses if d is not None]
        rationale = tok.encode(" ".join(words))
        ans = tok.encode(" ".join(answer)) + [tok.eos_token_id]
        p = len(prompt)
        ex = TokenizedExample(
            id=f"{id_prefix}-{i}",
            input_ids=tuple(prompt + rationale + ans),
            prompt_len=p,
            step_spans=tuple((p + a, p + b) for a, b in spans),
            answer_start=p + len(rationale),
            steps=tuple(" ".join(words[a:b]) for a, b in spans),
        )
        examples.append(ex)
        roles[ex.id] = role
    return PlantedTask(tok, examples, roles)
