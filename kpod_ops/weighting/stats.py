"""Summaries of learned weights and the optional per-sequence mean-1 renormalisation."""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..data.tokenized import TokenizedExample
from ..errors import bad_input
from .degenerate import degeneracy, finite_weights

KEPT = 0.5  # a token whose weight is above this is kept (``kept_ratio``, ``kept_keypoint_share``)


def renormalize_mean_one(weights: Mapping[str, np.ndarray], *, allow_degenerate: bool = False) -> dict[str, np.ndarray]:
    """Scale each sequence's weights to mean 1 (a documented deviation from the paper's raw w).

    ``L_m`` pushes raw weights towards 0, which shrinks the rationale loss and so the effective
    learning rate; mean-1 weights keep the loss scale of plain CE and only redistribute it.
    Degenerate weights (see :func:`kpod_ops.weighting.is_degenerate`) would become uniform 1s and
    turn KPOD into plain cross-entropy without a word, so they are refused unless
    ``allow_degenerate=True`` (then a warning says so). NaN/inf weights are refused. Empty
    sequences stay empty; an all-zero sequence is an error.
    """
    checked = finite_weights(weights)
    if any(w.size for w in checked.values()):
        reason = degeneracy(checked)
        if reason is not None:
            if not allow_degenerate:
                raise bad_input(
                    "weights",
                    "informative keypoint weights (or allow_degenerate=True to use them anyway)",
                    f"degenerate weights: {reason}; retrain the mask learner (see its fit warning)",
                )
            warnings.warn(f"renormalize_mean_one: using degenerate weights ({reason})", stacklevel=2)
    out = {}
    for key, w in checked.items():
        if w.size == 0:
            out[key] = w.astype(np.float32)
            continue
        m = float(w.mean())
        if not m > 0:
            raise bad_input(f"weights[{key!r}]", "a positive mean", m)
        out[key] = (w / m).astype(np.float32)
    return out


@dataclass
class WeightStats:
    """Spread of the weights over all rationale tokens and the tokens ranked by mean weight."""

    n_tokens: int
    mean: float
    std: float
    min: float
    max: float
    quantiles: dict[str, float]
    kept_ratio: float  # fraction of tokens with w > threshold
    degenerate: str | None = None  # why the weights carry no information (see is_degenerate), or None
    top_tokens: list[tuple[str, float, int]] = field(default_factory=list)  # (token, mean w, count)
    bottom_tokens: list[tuple[str, float, int]] = field(default_factory=list)

    def __str__(self) -> str:
        fmt = lambda rows: ", ".join(f"{t!r} {w:.3f} (x{c})" for t, w, c in rows)  # noqa: E731
        return (
            f"{self.n_tokens} tokens: mean {self.mean:.3f} ± {self.std:.3f}, range [{self.min:.3f}, {self.max:.3f}], "
            f"kept {self.kept_ratio:.1%}"
            + (f"\n  DEGENERATE: {self.degenerate}" if self.degenerate else "")
            + f"\n  top: {fmt(self.top_tokens)}\n  bottom: {fmt(self.bottom_tokens)}"
        )


def weight_stats(
    weights: Mapping[str, np.ndarray],
    examples: Sequence[TokenizedExample] | None = None,
    *,
    tokenizer: object | None = None,
    top_k: int = 10,
    min_count: int = 1,
    threshold: float = KEPT,
) -> WeightStats:
    """Statistics over every weight; with ``examples`` also the top/bottom token types by mean weight.

    Token types are ids (decoded with ``tokenizer`` when given) seen at least ``min_count`` times.
    ``degenerate`` says why the weights carry no keypoint information (see ``is_degenerate``), or
    is ``None``. NaN/inf weights are refused.
    """
    weights = finite_weights(weights)
    arrays = list(weights.values())
    flat = np.concatenate(arrays) if arrays else np.zeros(0)
    if flat.size == 0:
        raise bad_input("weights", "at least one token weight", "none")
    q = np.quantile(flat, [0.1, 0.25, 0.5, 0.75, 0.9])
    stats = WeightStats(
        n_tokens=int(flat.size),
        mean=float(flat.mean()),
        std=float(flat.std()),
        min=float(flat.min()),
        max=float(flat.max()),
        quantiles={k: float(v) for k, v in zip(("p10", "p25", "p50", "p75", "p90"), q)},
        kept_ratio=float((flat > threshold).mean()),
        degenerate=degeneracy(weights),
    )
    if examples is not None:
        sums: dict[int, list[float]] = defaultdict(lambda: [0.0, 0])
        for ex in examples:
            if ex.id not in weights:
                raise bad_input("weights", f"an entry for example id {ex.id!r}", "none")
            w = np.asarray(weights[ex.id])
            if w.shape != (ex.rationale_len,):
                raise bad_input(f"weights[{ex.id!r}]", f"shape ({ex.rationale_len},)", w.shape)
            for tok, v in zip(ex.rationale_ids, w):
                sums[tok][0] += float(v)
                sums[tok][1] += 1
        name = (lambda t: tokenizer.decode([t])) if tokenizer is not None else str
        rows = sorted(((name(t), s / c, c) for t, (s, c) in sums.items() if c >= min_count), key=lambda r: -r[1])
        stats.top_tokens, stats.bottom_tokens = rows[:top_k], rows[::-1][:top_k]
    return stats


_OPERATORS = frozenset("+-*/=×÷")


def token_role(piece: str) -> str:
    """``"keypoint"`` (a number or an arithmetic operator), ``"word"`` (alphabetic) or ``"other"``."""
    text = piece.strip()
    if text and (text.replace(".", "").replace(",", "").isdigit() or all(c in _OPERATORS for c in text)):
        return "keypoint"
    return "word" if text.isalpha() else "other"


def keypoint_ranking(weights: Mapping[str, np.ndarray], examples: Sequence[TokenizedExample], tokenizer: Any) -> dict | None:
    """How well the weights of arithmetic rationales rank numbers and operators above words.

    ``auc``: the ROC-AUC (the chance that a random number/operator token outweighs a random word
    token, ties counting half); 0.5 is no ranking, 1 a perfect one. Where most weights sit near 0, the
    AUC is decided by how those near-zero weights happen to be ordered, so it can differ a lot between
    weights that keep the same tokens; ``kept_keypoint_share`` does not: the share of numbers/operators
    among the number/operator and word tokens kept (w > 0.5; ``None`` if none is kept; ``n_kept_keypoint``
    and ``n_kept_word`` count them), to compare with ``keypoint_share``, their share among all such tokens
    (what keeping tokens at random gives). Also the mean weight of each class and their sizes. ``None`` when the rationales have no tokens of one of the classes (not
    arithmetic). A spread-only check cannot see weights that are confident about the wrong tokens.
    """
    decode = tokenizer.decode
    roles: dict[int, str] = {}
    key, word = [], []
    for ex in examples:
        w = np.asarray(weights[ex.id], dtype=np.float64)
        for tok, v in zip(ex.rationale_ids, w):
            role = roles.setdefault(int(tok), token_role(decode([int(tok)])))
            if role == "keypoint":
                key.append(v)
            elif role == "word":
                word.append(v)
    if not key or not word:
        return None
    k, ws = np.asarray(key), np.sort(np.asarray(word))
    below = np.searchsorted(ws, k, side="left")  # words strictly below each keypoint weight
    ties = np.searchsorted(ws, k, side="right") - below
    auc = float((below + 0.5 * ties).sum() / (k.size * ws.size))
    kept_key, kept_word = int((k > KEPT).sum()), int((ws > KEPT).sum())
    kept_share = kept_key / (kept_key + kept_word) if kept_key + kept_word else None
    return {"auc": auc, "kept_keypoint_share": kept_share, "keypoint_share": k.size / (k.size + ws.size),
            "n_kept_keypoint": kept_key, "n_kept_word": kept_word,
            "mean_keypoint": float(k.mean()), "mean_word": float(ws.mean()),
            "n_keypoint": int(k.size), "n_word": int(ws.size)}
