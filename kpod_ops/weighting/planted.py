"""A planted keypoint task with known answer-relevant tokens, for checking a mask learner.

Each rationale is a few sentences built from filler words, *relevant* clauses ``"has <digit>"``
and *distractor* clauses ``"page <digit>"``; the answer is the relevant digits in order. Only the
relevant digits decide the answer, and the distractors are digits too, so token identity alone
cannot separate them: a learner must use context. ``roles`` labels every rationale token.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..data.tokenized import TokenizedExample

FILLER = ("so", "then", "we", "see", "that", "it", "is", "now", "well", "also", "just", "and")
RELEVANT_MARKERS = ("has",)
DISTRACTOR_MARKERS = ("page",)
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
    return WordTokenizer(SPECIAL + FILLER + RELEVANT_MARKERS + DISTRACTOR_MARKERS + DIGITS)


@dataclass
class PlantedTask:
    tokenizer: WordTokenizer
    examples: list[TokenizedExample]
    roles: dict[str, list[str]]  # example id -> role of each rationale token


def planted_task(n: int, *, seed: int = 0, n_relevant: int = 2, n_distractors: int = 2, max_filler: int = 3) -> PlantedTask:
    """``n`` examples; roles are ``relevant``, ``distractor``, ``filler``, ``marker`` or ``punct``."""
    tok = planted_tokenizer()
    rng = np.random.default_rng(seed)
    prompt = tok.encode("Q: copy the counts A:")
    examples, roles = [], {}
    for i in range(n):
        kinds = ["relevant"] * n_relevant + ["distractor"] * n_distractors
        rng.shuffle(kinds)
        words, role, spans, answer = [], [], [], []
        for kind in kinds:
            start = len(words)
            for _ in range(int(rng.integers(1, max_filler + 1))):
                words.append(str(rng.choice(FILLER)))
                role.append("filler")
            digit = str(rng.choice(DIGITS))
            marker = RELEVANT_MARKERS[0] if kind == "relevant" else DISTRACTOR_MARKERS[0]
            words += [marker, digit]
            role += ["marker", kind]
            if rng.random() < 0.5:
                words.append(str(rng.choice(FILLER)))
                role.append("filler")
            words.append(".")
            role.append("punct")
            spans.append((start, len(words)))
            if kind == "relevant":
                answer.append(digit)
        rationale = tok.encode(" ".join(words))
        ans = tok.encode(" ".join(answer)) + [tok.eos_token_id]
        p = len(prompt)
        ex = TokenizedExample(
            id=f"planted-{i}",
            input_ids=tuple(prompt + rationale + ans),
            prompt_len=p,
            step_spans=tuple((p + a, p + b) for a, b in spans),
            answer_start=p + len(rationale),
            steps=tuple(" ".join(words[a:b]) for a, b in spans),
        )
        examples.append(ex)
        roles[ex.id] = role
    return PlantedTask(tok, examples, roles)
