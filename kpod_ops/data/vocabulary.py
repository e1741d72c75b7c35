"""How much of a dataset a word-level tokenizer does not know.

The built-in tiny tokenizer (``kpod_ops.models.tiny_tokenizer``) has one token per word it knows
and spells every other word out letter by letter ("Carlos" -> 6 tokens), so a student trained on
text full of such words spends its capacity on spelling. :func:`vocabulary_report` measures that
before any training: the share of words and of tokens that are out of vocabulary, and the most
frequent such words.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import bad_input
from .checks import example_list
from .example import CoTExample

_WORD = re.compile(r"[^\W\d_]+")
OOV_THRESHOLD = 0.02
"""Share of word occurrences out of vocabulary above which ``kpod distill`` warns."""


@dataclass(frozen=True)
class VocabularyReport:
    """Out-of-vocabulary words of the questions and rationales of some examples.

    A word (a run of letters) is out of vocabulary when the tokenizer has no single token for it
    with its leading space. ``n_oov_tokens`` counts the tokens spent on those words, ``top`` the
    most frequent of them with their counts.
    """

    n_words: int
    n_oov_words: int
    n_distinct_oov: int
    n_tokens: int
    n_oov_tokens: int
    top: tuple[tuple[str, int], ...]

    @property
    def oov_word_share(self) -> float:
        return self.n_oov_words / self.n_words if self.n_words else 0.0

    @property
    def oov_token_share(self) -> float:
        return self.n_oov_tokens / self.n_tokens if self.n_tokens else 0.0

    def __str__(self) -> str:
        top = ", ".join(f"{w} ({n})" for w, n in self.top[:10])
        return (f"{100 * self.oov_word_share:.1f} % of words ({self.n_oov_words} of {self.n_words}, {self.n_distinct_oov} distinct) "
                f"and {100 * self.oov_token_share:.1f} % of tokens are out of the tokenizer's vocabulary"
                + (f"; most frequent: {top}" if top else ""))

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable (``report.json``'s ``data.vocabulary``)."""
        return {"n_words": self.n_words, "n_oov_words": self.n_oov_words, "n_distinct_oov": self.n_distinct_oov,
                "oov_word_share": round(self.oov_word_share, 4), "n_tokens": self.n_tokens, "n_oov_tokens": self.n_oov_tokens,
                "oov_token_share": round(self.oov_token_share, 4), "top": [list(t) for t in self.top]}


def vocabulary_report(examples: Sequence[CoTExample], tokenizer: Any, *, top: int = 20) -> VocabularyReport:
    """Count the words of ``examples``' questions and rationales that ``tokenizer`` spells out.

    Meant for word-level tokenizers such as the built-in one, where a word without a token of its
    own is truly unknown; a subword tokenizer (BPE, SentencePiece) splits rare words by design and
    its "out of vocabulary" share is large without being a problem.
    """
    items = example_list(examples, "examples", CoTExample)
    if not callable(tokenizer):
        raise bad_input("tokenizer", "a Hugging Face tokenizer", type(tokenizer).__name__)
    if isinstance(top, bool) or not isinstance(top, int) or top < 0:
        raise bad_input("top", "an int >= 0", repr(top))
    texts = [text for ex in items for text in (ex.question, ex.rationale)]
    words = Counter(w for text in texts for w in _WORD.findall(text))
    distinct = sorted(words)
    unk = getattr(tokenizer, "unk_token_id", None)
    pieces = tokenizer([" " + w for w in distinct], add_special_tokens=False)["input_ids"] if distinct else []
    oov = {w: len(ids) for w, ids in zip(distinct, pieces) if len(ids) != 1 or (unk is not None and ids[0] == unk)}
    n_tokens = sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])
    ranked = sorted(oov, key=lambda w: (-words[w], w))
    return VocabularyReport(
        n_words=sum(words.values()),
        n_oov_words=sum(words[w] for w in oov),
        n_distinct_oov=len(oov),
        n_tokens=n_tokens,
        n_oov_tokens=sum(words[w] * n for w, n in oov.items()),
        top=tuple((w, words[w]) for w in ranked[:top]),
    )


def oov_advice(report: VocabularyReport, threshold: float = OOV_THRESHOLD) -> str | None:
    """What to do when more than ``threshold`` of the words are out of vocabulary; None below it."""
    if report.oov_word_share <= threshold:
        return None
    return (f"{report}. The built-in tokenizer spells these words out letter by letter, so the tiny student "
            "learns spelling instead of reasoning and its generations turn to letter soup: pass --student DIR, a "
            "Hugging Face model folder with its own tokenizer (e.g. SmolLM2-135M), or a tiny student whose "
            "tokenizer is built from your data (docs/data.md, 'A tokenizer built from your data')")
