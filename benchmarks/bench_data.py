"""Data-layer benchmark: prepare GSM8K-sized data with SmolLM2's tokenizer, and collate batches.

Preparing = loading ``n`` gsm-symbolic examples, splitting steps, tokenising and locating spans
(decoder-only, full-text offsets). Collating = ``KPODCollator`` on batches with token weights and
a schedule. Run: ``python benchmarks/bench_data.py [--n 7473] [--batch-size 16]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
from machine import summary


def machine() -> str:
    return summary()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=7473, help="examples to prepare (GSM8K train size)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()

    from kpod_ops.data import KPODCollator, load_builtin, tokenize_examples
    from kpod_ops.models import load_smollm2_tokenizer

    t0 = time.perf_counter()
    tok = load_smollm2_tokenizer()
    t_tok = time.perf_counter() - t0

    t0 = time.perf_counter()
    examples = load_builtin("gsm-symbolic", "train", n=args.n, seed=0)
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    tokenized = tokenize_examples(examples, tok)
    t_prep = time.perf_counter() - t0

    rng = np.random.default_rng(0)
    weights = {te.id: rng.uniform(0.05, 0.95, te.rationale_len).astype(np.float32) for te in tokenized}
    given = {te.id: int(rng.integers(0, te.n_steps + 1)) for te in tokenized}
    collate = KPODCollator(tok, weights, given, pad_to_multiple_of=8)
    times, lengths = [], []
    for i in range(args.batches):
        idx = rng.choice(len(tokenized), args.batch_size, replace=False)
        batch = [tokenized[j] for j in idx]
        t0 = time.perf_counter()
        out = collate(batch)
        times.append(time.perf_counter() - t0)
        lengths.append(out["input_ids"].shape[1])
        if i == 0:
            times.pop()  # warm-up

    figures = {
        "machine": machine(),
        "n_examples": len(tokenized),
        "tokenizer_load_s": round(t_tok, 2),
        "load_gsm_symbolic_s": round(t_load, 2),
        "split_tokenize_spans_s": round(t_prep, 2),
        "prepare_total_s": round(t_load + t_prep, 2),
        "mean_tokens_per_example": round(float(np.mean([len(te.input_ids) for te in tokenized])), 1),
        "mean_steps_per_example": round(float(np.mean([te.n_steps for te in tokenized])), 2),
        "batch_size": args.batch_size,
        "mean_padded_length": round(float(np.mean(lengths)), 1),
        "collate_ms_per_batch_median": round(1e3 * statistics.median(times), 3),
        "collate_ms_per_batch_p95": round(1e3 * float(np.percentile(times, 95)), 3),
    }
    for key, value in figures.items():
        print(f"{key:32s} {value}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main()
