"""Mask-learner throughput with SmolLM2-135M on CPU, against one student forward+backward.

Measures, on the same examples (synthetic GSM8K-like rationales tokenised with SmolLM2's
tokenizer): (a) one mask-learner training step with the P prefixes of every example in one
batched forward and the answer loss from the hidden states (fused linear loss, the default),
(b) the same with the answer loss from the answer rows' logits (``fused_linear=False``), (c) one
predictor row per prefix, (d) one plain student forward+backward over the full sequences; and (a)
without ``cap_at_blank`` (on by default for a LoRA predictor: one more forward without gradients). Prints
examples/second and the ratios, with the machine. Run it twice to cover both allocators:

    python benchmarks/bench_weighting.py
    THP_MEM_ALLOC_ENABLE=1 python benchmarks/bench_weighting.py
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from machine import summary

from kpod_ops.data.tokenized import TokenizedExample
from kpod_ops.weighting import MaskLearner, MaskLearnerConfig
from kpod_ops.weighting.batching import make_batch

NAMES = ("Mark", "Jennifer", "Tom", "Ana")


def machine() -> str:
    return summary()


def examples(tok, n: int, seed: int = 0) -> list[TokenizedExample]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        a, b, c = (int(x) for x in rng.integers(2, 90, 3))
        name = NAMES[i % len(NAMES)]
        q = f"Q: {name} has {a} apples and buys {b} bags with {c} apples each. How many apples now? A: Let's think step by step."
        steps = [
            f" {name} buys {b} bags of {c} apples, so {b} * {c} = {b * c} apples.",
            f" Then {a} + {b * c} = {a + b * c} apples in total.",
        ]
        answer = f" Therefore, the answer is {a + b * c}."
        ids, spans = tok(q)["input_ids"], []
        for s in steps:
            t = tok(s)["input_ids"]
            spans.append((len(ids), len(ids) + len(t)))
            ids += t
        start = len(ids)
        ids += tok(answer)["input_ids"] + [tok.eos_token_id]
        out.append(TokenizedExample(f"b{i}", tuple(ids), spans[0][0], tuple(spans), start))
    return out


def timeit(fn, repeats: int) -> float:
    fn()  # warm-up
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t) / repeats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--prefixes", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--training", default="lora", choices=["full", "lora", "frozen"])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    ap.add_argument("--out", help="write the figures as JSON here (e.g. benchmarks/results/bench_weighting_<date>.json)")
    args = ap.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    from kpod_ops.models import load_smollm2, load_smollm2_tokenizer

    t0 = time.perf_counter()
    tok = load_smollm2_tokenizer()
    student = load_smollm2()
    predictor = load_smollm2()
    load_s = time.perf_counter() - t0
    exs = examples(tok, args.batch)
    batch = make_batch(exs)
    cfg = MaskLearnerConfig(num_prefixes=args.prefixes, predictor_training=args.training, copy_predictor=False)
    learner = MaskLearner(student, predictor, cfg)
    learner.train()

    fused = learner.predictor.fused_linear

    def mask_step(share: bool, linear: bool = fused, cap: bool | None = None) -> None:
        learner.predictor.share_prefixes = share
        learner.predictor.fused_linear = linear
        learner.zero_grad(set_to_none=True)
        learner.objective(batch, rng=np.random.default_rng(0), cap_at_blank=cap)["loss"].backward()

    ids = torch.nn.utils.rnn.pad_sequence(
        [torch.tensor(ex.input_ids) for ex in exs], batch_first=True, padding_value=tok.pad_token_id
    )
    attn = torch.nn.utils.rnn.pad_sequence([torch.ones(len(ex.input_ids), dtype=torch.long) for ex in exs], batch_first=True)
    labels = ids.masked_fill(attn == 0, -100)

    def student_step() -> None:
        student.zero_grad(set_to_none=True)
        student(input_ids=ids, attention_mask=attn, labels=labels).loss.backward()

    with torch.no_grad():  # the scale of the two terms, literal sums against the normalized default
        scale = {}
        for objective in ("literal", "normalized"):
            learner.config.objective, learner.config.mask_norm = objective, None
            out = learner.objective(batch, rng=np.random.default_rng(0), generator=torch.Generator().manual_seed(0))
            alpha = 0.5 if objective == "literal" else learner.config.alpha
            scale[f"{objective}_L_p_per_example"] = float(out["answer_loss"])
            scale[f"{objective}_alpha_L_m_per_example"] = alpha * float(out["mask_loss"])
        learner.config.objective = "normalized"
    shared = timeit(lambda: mask_step(True), args.repeats)
    shared_logits = timeit(lambda: mask_step(True, False), args.repeats)
    uncapped = timeit(lambda: mask_step(True, cap=False), args.repeats)
    per_row = timeit(lambda: mask_step(False), args.repeats)
    plain = timeit(student_step, args.repeats)
    rows = sum(min(args.prefixes, ex.rationale_len) for ex in exs)
    res = {
        "machine": machine(),
        "model": "SmolLM2-135M-Instruct (Q4_1 GGUF, de-quantised fp32)",
        "predictor_training": args.training,
        "threads": torch.get_num_threads(),
        "answer_loss": "fused linear (no logits)" if fused else f"logits ({learner.predictor.fused_linear_reason})",
        "batch": args.batch,
        "prefixes": args.prefixes,
        "rows_per_step": rows,
        "mean_sequence_tokens": float(np.mean([len(ex.input_ids) for ex in exs])),
        "mask_step_shared_s": shared,
        "mask_step_shared_logits_s": shared_logits,
        "cap_at_blank": cfg.caps_at_blank,
        "mask_step_uncapped_s": uncapped,
        "mask_step_per_row_s": per_row,
        "student_fwd_bwd_s": plain,
        "mask_examples_per_s": args.batch / shared,
        "student_examples_per_s": args.batch / plain,
        "mask_cost_vs_student": shared / plain,
        "logits_cost_vs_student": shared_logits / plain,
        "fused_speedup_vs_logits": shared_logits / shared,
        "uncapped_cost_vs_student": uncapped / plain,
        "per_row_cost_vs_student": per_row / plain,
        "shared_speedup_vs_per_row": per_row / shared,
        "model_load_s": load_s,
        **scale,
    }
    for k, v in res.items():
        print(f"{k:32s} {v:.4g}" if isinstance(v, float) else f"{k:32s} {v}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
