"""GPU benchmark of the fused linear keypoint cross-entropy (LM head + loss without the logits).

Usage: python3 benchmarks/bench_linear_loss_gpu.py OUT_DIR [--shapes smollm2 qwen2.5-0.5b] [--n 16384]
       [--active 1.0 0.3] [--dtype bf16] [--reps 5] [--device cuda]

Forward + backward of a scalar loss (Σ ω·ℓ over active positions ÷ their number) from hidden
states ``[N, H]`` and an LM head ``[V, H]``, gradients w.r.t. both, for the heads of SmolLM2-135M
(H = 576, V = 49,152) and Qwen2.5-0.5B (H = 896, V = 151,936), with every position active and with
30 % active (a mid-curriculum stage: the first 70 % of each 2,048-token sequence before loss_start).
Methods, on the same inputs:
  eager        F.linear then F.cross_entropy(reduction="none"), weighted and masked with torch.where
  compile      torch.compile of that eager function
  kpod         kpod_ops.keypoint_linear_cross_entropy(impl="fused") (inactive rows never reach the
               matmul; chunked head; gradients in the forward pass)
  liger_flce   Liger-Kernel's fused linear cross-entropy, reduction "mean" over the active positions:
               it has no per-token weights, so it computes the unweighted loss (a lower bound on its
               cost for KPOD)
  cce          Cut Cross-Entropy's linear_cross_entropy(reduction="none"), weighted and masked the
               same way as eager
Time: CUDA events around forward + backward, the median of ``--reps`` after one warm-up. Memory: the
peak allocated during the step above what was allocated before it (inputs and parameters), less
the LM head's gradient (which every method must produce). A method that is not installed, or that
fails (out of memory included), is recorded with its error and the others go on. Results are
written after every configuration (linear_table.csv, linear_results.json), so a timeout keeps them.
``--device cpu`` runs the same code on the CPU (small sizes: a check of the script, not a benchmark).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import kpod_ops  # noqa: E402

SHAPES = {"smollm2": (576, 49152), "qwen2.5-0.5b": (896, 151936)}
METHODS = ["eager", "compile", "kpod", "liger_flce", "cce"]
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}
SEQ = 2048


def _inputs(n, h, v, dtype, active, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(n, h, generator=g)).to(device=device, dtype=dtype)
    head = (torch.randn(v, h, generator=g) / h**0.5).to(device=device, dtype=dtype)
    labels = torch.randint(0, v, (n,), generator=g).to(device)
    weights = (torch.rand(n, generator=g) + 0.5).to(device)
    seq = min(SEQ, n)
    pos = torch.arange(n, device=device) % seq
    mask = pos >= int(round(seq * (1.0 - active)))  # loss_start at (1 − active) of each sequence
    return hidden, head, labels, weights, mask


def _eager(hidden, head, labels, weights, mask):
    logits = F.linear(hidden, head).float()
    ce = F.cross_entropy(logits, torch.where(mask, labels, 0), reduction="none")
    return torch.where(mask, weights * ce, 0.0).sum() / mask.sum().clamp(min=1)


def _method(name, device):
    """(the loss function of ``name``, None) or (None, why it cannot run)."""
    if name == "eager":
        return _eager, None
    if name == "compile":
        return torch.compile(_eager), None
    if name == "kpod":
        ok, why = kpod_ops.fused_status(device)
        if not ok:
            return None, why

        def kpod(hidden, head, labels, weights, mask):
            return kpod_ops.keypoint_linear_cross_entropy(
                hidden, head, torch.where(mask, labels, -100), weights, reduction="mean", impl="fused", validate=False
            )

        return kpod, None
    if name == "liger_flce":
        try:
            from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy
        except Exception as exc:  # not installed, or no Triton for this device
            return None, f"{type(exc).__name__}: {exc}"

        def liger(hidden, head, labels, weights, mask):
            out = liger_fused_linear_cross_entropy(hidden, head, torch.where(mask, labels, -100), reduction="mean")
            return out[0] if isinstance(out, tuple) else out

        return liger, None
    if name == "cce":
        try:
            from cut_cross_entropy import linear_cross_entropy
        except Exception as exc:
            return None, f"{type(exc).__name__}: {exc}"

        def cce(hidden, head, labels, weights, mask):
            per = linear_cross_entropy(hidden, head, torch.where(mask, labels, -100), reduction="none")
            return torch.where(mask, weights * per.float(), 0.0).sum() / mask.sum().clamp(min=1)

        return cce, None
    raise ValueError(name)


def _step(fn, inputs):
    hidden, head, labels, weights, mask = inputs
    h = hidden.detach().requires_grad_(True)
    w = head.detach().requires_grad_(True)
    loss = fn(h, w, labels, weights, mask)
    loss.backward()
    return float(loss.detach())


def _timed(fn, inputs, device):
    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        loss = _step(fn, inputs)
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1e3, loss
    t0 = time.perf_counter()
    loss = _step(fn, inputs)
    return time.perf_counter() - t0, loss


def measure(name, inputs, reps, device):
    fn, why = _method(name, device)
    if fn is None:
        return {"error": why}
    try:
        _step(fn, inputs)  # warm-up (compiles for "compile", autotunes Triton kernels)
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        times, loss = [], None
        for _ in range(reps):
            dt, loss = _timed(fn, inputs, device)
            times.append(dt)
        out = {"time_s": statistics.median(times), "loss": loss}
        if device == "cuda":
            head = inputs[1]
            grad_bytes = head.numel() * head.element_size()
            out["peak_extra_mib"] = (torch.cuda.max_memory_allocated() - base - grad_bytes) / 2**20
        return out
    except Exception as exc:  # out of memory, an unsupported dtype, ...
        if device == "cuda":
            torch.cuda.empty_cache()
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir")
    p.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    p.add_argument("--n", type=int, default=16384, help="positions (8 sequences of 2,048 by default)")
    p.add_argument("--active", type=float, nargs="+", default=[1.0, 0.3])
    p.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=METHODS)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--vocab", type=int, default=None, help="override V of every shape (--device cpu checks)")
    a = p.parse_args()
    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_linear_loss_gpu: no CUDA device (pass --device cpu to check the script on the CPU)")
    os.makedirs(a.out_dir, exist_ok=True)
    info = {
        "torch": torch.__version__, "device": torch.cuda.get_device_name() if a.device == "cuda" else "cpu",
        "kpod_ops_fused": kpod_ops.fused_status(a.device)[1], "dtype": a.dtype, "n": a.n, "reps": a.reps,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    print(json.dumps(info), flush=True)
    rows = []
    fields = ["shape", "H", "V", "active", "method", "time_s", "x_kpod", "peak_extra_mib", "loss", "error"]
    for shape in a.shapes:
        h, v = SHAPES[shape]
        v = a.vocab or v
        for active in a.active:
            inputs = _inputs(a.n, h, v, DTYPES[a.dtype], active, a.device)
            results = {m: measure(m, inputs, a.reps, a.device) for m in a.methods}
            kpod_t = results.get("kpod", {}).get("time_s")
            for m, r in results.items():
                row = {"shape": shape, "H": h, "V": v, "active": active, "method": m, **r}
                if kpod_t and "time_s" in r:
                    row["x_kpod"] = r["time_s"] / kpod_t
                rows.append(row)
                shown = (f"{r['time_s'] * 1e3:9.2f} ms" if "time_s" in r else "   failed  ") + (
                    f"  {row['x_kpod']:5.2f}x kpod" if "x_kpod" in row else "")
                if "peak_extra_mib" in r:
                    shown += f"  peak extra {r['peak_extra_mib']:9.1f} MiB"
                print(f"{shape:>13} active={active:.1f} {m:>10}: {shown}  {r.get('error', '')}", flush=True)
            del inputs
            with open(os.path.join(a.out_dir, "linear_table.csv"), "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
                writer.writeheader()
                writer.writerows(rows)
            with open(os.path.join(a.out_dir, "linear_results.json"), "w") as f:
                json.dump({"machine": info, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
