"""CPU benchmark of the fused linear keypoint cross-entropy (LM head + loss without the logits).

Forward+backward of a scalar loss (Σ ω·ℓ over active positions ÷ their number) for SmolLM2's head
(N=4096 positions, H=576, V=49152, fp32 by default), gradients w.r.t. the hidden states and the
LM-head weight. Side by side:

  eager       F.linear then F.cross_entropy(reduction="none"), weighted and masked with
              torch.where, summed and divided (what users write today; weights emulated)
  torch_lce   torch.nn.functional.linear_cross_entropy with its chunked path
              (LinearCrossEntropyOptions with kpod's chunk rows: its default picks 2-row chunks
              here), reduction="none" times the weights (its only way to weight tokens), where
              this torch has it
  kpod        kpod_ops.keypoint_linear_cross_entropy (inactive rows dropped before the matmul,
              chunked LM head, gradients in the forward pass)

with every position active and with 30% active (``loss_start`` at 70% of each 512-token sequence;
ignore_index for the others). Each configuration runs in a fresh process: peak extra memory is the
peak RSS above the RSS once the inputs exist (after a tiny warm-up call of the same method), less
the weight's gradient (a parameter gradient, which every method must produce); time is the median
of the repetitions after the first. The methods alternate over ``--rounds`` rounds (a fresh process
each time) so that the load of a shared machine falls on all of them alike; the figures are the
medians over the rounds. Every configuration runs with the default allocator and with
THP_MEM_ALLOC_ENABLE=1.

  python benchmarks/bench_linear_loss.py                  # the README table
  python benchmarks/bench_linear_loss.py --n 1024 --reps 1 --allocators default   # quick look
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from machine import describe

METHODS = ["eager", "torch_lce", "kpod"]
SEQ = 512


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _inputs(n: int, h: int, v: int, active: float, dtype: torch.dtype):
    g = torch.Generator().manual_seed(0)
    B = max(1, n // SEQ)
    T = n // B
    hidden = torch.randn(B, T, h, generator=g, dtype=torch.float32).to(dtype).requires_grad_()
    weight = torch.randn(v, h, generator=g, dtype=torch.float32).mul_(h**-0.5).to(dtype).requires_grad_()
    labels = torch.randint(0, v, (B, T), generator=g)
    weights = torch.rand(B, T, generator=g, dtype=torch.float32)
    loss_start = torch.full((B,), int(round(T * (1.0 - active))), dtype=torch.int64)
    return hidden, weight, labels, weights, loss_start


def _eager(hidden, weight, labels, weights, loss_start):
    B, T, V = labels.shape[0], labels.shape[1], weight.shape[0]
    logits = F.linear(hidden, weight)
    active = torch.arange(T).unsqueeze(0) >= loss_start.unsqueeze(1)
    ce = F.cross_entropy(logits.reshape(-1, V).float(), labels.reshape(-1), reduction="none").reshape(B, T)
    return torch.where(active, weights * ce, 0.0).sum() / active.sum()


def _chunk_rows(hidden, weight) -> int:
    # the same rows per chunk as kpod's "auto": torch's own default ("aspect_ratio:2") picks
    # 2-row chunks on this CPU, which runs ~10x slower than eager
    from kpod_ops.losses.linear import auto_chunk_size

    n, h = hidden.reshape(-1, hidden.shape[-1]).shape
    return auto_chunk_size(n, h, weight.shape[0])


def _torch_lce(hidden, weight, labels, weights, loss_start):
    T = labels.shape[1]
    active = torch.arange(T).unsqueeze(0) >= loss_start.unsqueeze(1)
    masked = torch.where(active, labels, -100)
    ce = F.linear_cross_entropy(
        hidden.reshape(-1, hidden.shape[-1]), weight, masked.reshape(-1), reduction="none",
        options=torch.nn.LinearCrossEntropyOptions(batch_chunk_size=_chunk_rows(hidden, weight)),
    )
    return (ce * weights.reshape(-1)).sum() / active.sum()


def _kpod(hidden, weight, labels, weights, loss_start, chunk_size="auto"):
    import kpod_ops

    return kpod_ops.keypoint_linear_cross_entropy(
        hidden, weight, labels, weights, loss_start, reduction="mean", chunk_size=chunk_size
    )


def child(method: str, n: int, h: int, v: int, active: float, dtype: str, reps: int, chunk_size: str) -> dict:
    """One configuration in this (fresh) process."""
    import warnings

    warnings.filterwarnings("ignore")
    dt = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    inputs = _inputs(n, h, v, active, dt)
    hidden, weight = inputs[0], inputs[1]
    if method == "kpod":
        chunk = chunk_size if chunk_size == "auto" else int(chunk_size)

        def fn(*a):
            return _kpod(*a, chunk_size=chunk)
    else:
        fn = {"eager": _eager, "torch_lce": _torch_lce}[method]
    # a tiny warm-up call first: lazy imports and one-time initialisation are not the method's memory
    small = _inputs(SEQ, 16, 64, active, dt)
    fn(*small).backward()
    del small
    base = _rss()
    times = []
    peak = None
    for i in range(reps + 1):
        hidden.grad = None
        weight.grad = None
        t0 = time.perf_counter()
        loss = fn(*inputs)
        loss.backward()
        times.append(time.perf_counter() - t0)
        if i == 0:
            grad_bytes = weight.grad.numel() * weight.grad.element_size()
            peak = _peak_rss() - base - grad_bytes
        del loss
    return {
        "method": method, "n": n, "hidden": h, "vocab": v, "active": active, "dtype": dtype,
        "chunk_size": chunk_size, "peak_extra_mib": peak / 2**20,
        "time_s": statistics.median(times[1:]) if reps else times[0], "times_s": times,
    }


def _run_child(args, method: str, active: float, allocator: str) -> dict:
    env = dict(os.environ)
    env.pop("THP_MEM_ALLOC_ENABLE", None)
    if allocator == "thp":
        env["THP_MEM_ALLOC_ENABLE"] = "1"
    cmd = [
        sys.executable, __file__, "--child", method, "--n", str(args.n), "--hidden", str(args.hidden),
        "--vocab", str(args.vocab), "--active", str(active), "--dtype", args.dtype, "--reps", str(args.reps),
        "--chunk-size", args.chunk_size,
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    row = json.loads(out.stdout.strip().splitlines()[-1])
    row["allocator"] = allocator
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=4096)
    p.add_argument("--hidden", type=int, default=576)
    p.add_argument("--vocab", type=int, default=49152)
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--active", type=float, nargs="+", default=[1.0, 0.3])
    p.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    p.add_argument("--allocators", nargs="+", default=["default", "thp"], choices=["default", "thp"])
    p.add_argument("--reps", type=int, default=1, help="timed repetitions after the first (memory) one")
    p.add_argument("--rounds", type=int, default=2, help="fresh processes per method, alternating")
    p.add_argument("--chunk-size", default="auto")
    p.add_argument("--out", default=None, help="JSON file for the results (default: benchmarks/results/...)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.n, args.hidden, args.vocab, args.active[0], args.dtype, args.reps,
                               args.chunk_size)))
        return
    methods = [m for m in args.methods if m != "torch_lce" or hasattr(F, "linear_cross_entropy")]
    if "torch_lce" in args.methods and "torch_lce" not in methods:
        print(f"torch {torch.__version__} has no torch.nn.functional.linear_cross_entropy: skipped")
    rows = []
    for allocator in args.allocators:
        for active in args.active:
            runs: dict[str, list[dict]] = {m: [] for m in methods}
            for _ in range(args.rounds):
                for method in methods:
                    run = _run_child(args, method, active, allocator)
                    runs[method].append(run)
                    print(f"{allocator:8s} active={active:.0%} {method:10s} time {run['time_s']:.3f} s  "
                          f"peak extra {run['peak_extra_mib']:.0f} MiB", flush=True)
            for method in methods:
                row = dict(runs[method][0])
                row["time_s"] = statistics.median(r["time_s"] for r in runs[method])
                row["peak_extra_mib"] = statistics.median(r["peak_extra_mib"] for r in runs[method])
                row["rounds"] = runs[method]
                rows.append(row)
    print("\nratios vs eager in the same configuration (time, peak extra memory):")
    for allocator in args.allocators:
        for active in args.active:
            ref = next(r for r in rows if r["method"] == "eager" and r["active"] == active and r["allocator"] == allocator) \
                if "eager" in methods else None
            for r in rows:
                if r["allocator"] != allocator or r["active"] != active or ref is None:
                    continue
                r["time_vs_eager"] = r["time_s"] / ref["time_s"]
                r["memory_vs_eager"] = r["peak_extra_mib"] / ref["peak_extra_mib"]
                print(f"{allocator:8s} active={active:.0%} {r['method']:10s} time x{r['time_vs_eager']:.2f}  "
                      f"memory x{r['memory_vs_eager']:.3f}")
    machine = describe()
    # the allocator is set per child process (see each row's "allocator"), not in this parent
    machine["THP_MEM_ALLOC_ENABLE"] = {"default": "unset", "thp": "1"} if len(args.allocators) > 1 else (
        "1" if args.allocators == ["thp"] else "unset")
    result = {"machine": machine, "args": vars(args), "rows": rows}
    out = args.out or os.path.join(
        os.path.dirname(__file__), "results", f"bench_linear_loss_{args.dtype}_{time.strftime('%Y%m%d-%H%M%S')}.json"
    )
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
