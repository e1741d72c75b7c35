"""Saving and loading token weights together with the tokens they belong to.

A weight file holds, per example id, the weights *and* the rationale token ids they were computed
on, plus an optional tokenizer fingerprint. Loading checks both against the examples you pass, so
a changed tokenizer or prompt template fails loudly instead of shifting weights onto the wrong
tokens. Files are ``.npz`` written atomically (temporary file + rename).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..data.tokenized import TokenizedExample
from ..errors import KPODInputError, bad_input

FORMAT = "kpod-token-weights/1"


def tokenizer_fingerprint(tokenizer: object) -> str:
    """SHA-256 of the tokenizer's class, vocabulary and special tokens (stable across processes)."""
    if not hasattr(tokenizer, "get_vocab"):
        raise bad_input("tokenizer", "an object with get_vocab() (a Hugging Face tokenizer)", type(tokenizer).__name__)
    special = getattr(tokenizer, "all_special_tokens", None) or []
    payload = json.dumps([type(tokenizer).__name__, sorted(tokenizer.get_vocab().items()), list(special)], ensure_ascii=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def _check_weights(weights: Mapping[str, np.ndarray], examples: Sequence[TokenizedExample]) -> None:
    for ex in examples:
        if ex.id not in weights:
            raise bad_input("weights", f"an entry for every example (missing id {ex.id!r})", f"{len(weights)} entries")
        w = np.asarray(weights[ex.id])
        if w.shape != (ex.rationale_len,):
            raise bad_input(f"weights[{ex.id!r}]", f"shape ({ex.rationale_len},) (the rationale length)", w.shape)
        if not np.all(np.isfinite(w)):
            raise bad_input(f"weights[{ex.id!r}]", "finite values", "NaN or inf")


def save_token_weights(
    path: str | os.PathLike,
    weights: Mapping[str, np.ndarray],
    examples: Sequence[TokenizedExample],
    *,
    tokenizer: object | None = None,
    metadata: Mapping | None = None,
) -> Path:
    """Write ``weights`` (id -> per-rationale-token array) for ``examples`` with their token ids."""
    _check_weights(weights, examples)
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_suffix(path.suffix + ".npz")
    meta = {
        "format": FORMAT,
        "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer) if tokenizer is not None else None,
        "metadata": dict(metadata or {}),
    }
    lengths = np.array([ex.rationale_len for ex in examples], dtype=np.int64)
    arrays = {
        "ids": np.array([ex.id for ex in examples], dtype=str),
        "offsets": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        "weights": np.concatenate([np.asarray(weights[ex.id], np.float32) for ex in examples] or [np.zeros(0, np.float32)]),
        "rationale_ids": np.concatenate([np.asarray(ex.rationale_ids, np.int64) for ex in examples] or [np.zeros(0, np.int64)]),
        "meta": np.array(json.dumps(meta)),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)
    return path


def load_token_weights(
    path: str | os.PathLike,
    examples: Sequence[TokenizedExample] | None = None,
    *,
    tokenizer: object | None = None,
) -> dict[str, np.ndarray]:
    """Read a weight file; with ``examples``, check each one's rationale tokens and return theirs.

    Raises :class:`KPODInputError` naming the file and example when an id is missing, when the
    stored rationale token ids differ from the example's (changed tokenizer or template), or when
    ``tokenizer``'s fingerprint differs from the one saved.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            ids, offsets = [str(i) for i in z["ids"]], z["offsets"]
            weights, tokens = z["weights"], z["rationale_ids"]
    except (OSError, KeyError, ValueError) as err:
        raise KPODInputError(f"{path}: expected a token-weight file written by save_token_weights, got {err}") from err
    if meta.get("format") != FORMAT:
        raise KPODInputError(f"{path}: expected format {FORMAT!r}, got {meta.get('format')!r}")
    if tokenizer is not None:
        saved = meta.get("tokenizer_fingerprint")
        if saved is not None and saved != tokenizer_fingerprint(tokenizer):
            raise KPODInputError(
                f"{path}: tokenizer fingerprint differs from the one the weights were computed with (saved {saved[:12]}…); recompute the weights"
            )
    index = {i: n for n, i in enumerate(ids)}
    wanted = list(examples) if examples is not None else None
    out: dict[str, np.ndarray] = {}
    for key in wanted if wanted is not None else ids:
        ex_id = key.id if wanted is not None else key
        if ex_id not in index:
            raise KPODInputError(
                f"{path}: expected weights for example id {ex_id!r}, got none (the file has {len(ids)} examples)"
            )
        n = index[ex_id]
        a, b = int(offsets[n]), int(offsets[n + 1])
        if wanted is not None:
            stored, given = tokens[a:b], np.asarray(key.rationale_ids, np.int64)
            if stored.shape != given.shape or not np.array_equal(stored, given):
                first = next(
                    (j for j in range(min(len(stored), len(given))) if stored[j] != given[j]), min(len(stored), len(given))
                )
                raise KPODInputError(
                    f"{path}: example {ex_id!r}: rationale tokens differ from those the weights were computed on "
                    f"(stored {len(stored)} tokens, given {len(given)}, first difference at token {first}); "
                    "the tokenizer or template changed: recompute the weights"
                )
        out[ex_id] = weights[a:b].copy()
    return out
