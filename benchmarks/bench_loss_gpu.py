"""GPU benchmark of the fused keypoint cross-entropy: forward+backward time, bandwidth, peak memory.

Usage: python3 benchmarks/bench_loss_gpu.py OUT_DIR [--n 8192] [--vocab 32000 128256] [--dtype bf16 fp32]

Methods (same inputs: ~10% ignored positions, random per-token weights, reduction "mean"):
  fused            kpod_ops.keypoint_cross_entropy(..., impl="fused") (one launch, gradient kept)
  fused_inplace    the same with inplace_backward=True (gradient written over the logits)
  kernel_fb / kernel_inplace   the forward+backward op alone (no Python API around it)
  eager            F.cross_entropy(logits.float(), reduction="none"), weighted and masked with
                   torch.where, summed and divided, backward
  compile          torch.compile of that eager function
  liger            Liger-Kernel's liger_cross_entropy(reduction="none"), weighted the same way
  cce              skipped: Cut Cross-Entropy needs hidden states and a classifier (linear CE)
The timed region is forward + backward down to the gradient of a leaf whose clone is the logits
(clone's backward is free), measured with CUDA events; the median of the repetitions is reported.
Bandwidth: the fused functional mode counts 3 passes over the logits (read, read, write), the
in-place mode 2 (read, write), against a measured device-to-device copy bandwidth.
Results are written after every configuration (table.csv, results.json), so a timeout keeps them.
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import kpod_ops  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}


def copy_bandwidth(nbytes: int = 2 << 30, reps: int = 20) -> float:
    """Bytes read + written per second of a large device-to-device copy."""
    a = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps):
        start.record()
        b.copy_(a)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    del a, b
    return 2 * nbytes / statistics.median(times)


def eager_loss(x, labels, w):
    ell = F.cross_entropy(x.float(), labels, reduction="none")
    active = labels != -100
    c = torch.where(active, w * ell, torch.zeros((), device=x.device))
    return c.sum() / active.sum().clamp_min(1)


def time_fwd_bwd(fn, base, reps, warmup=2):
    """Median seconds of fn(x).backward() with x = base-leaf.clone(); the clone is not timed."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for i in range(warmup + reps):
        h = base.detach().clone().requires_grad_(True)
        x = h.clone()
        start.record()
        loss = fn(x)
        loss.backward()
        end.record()
        end.synchronize()
        if i >= warmup:
            times.append(start.elapsed_time(end) / 1e3)
        del h, x, loss
    return statistics.median(times)


def peak_extra(fn, base):
    """Peak bytes allocated during one forward+backward above what exists before it."""
    h = base.detach().clone().requires_grad_(True)
    x = h.clone()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn(x).backward()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    del h, x
    return peak


def time_op(fn, reps, warmup=2):
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for i in range(warmup + reps):
        start.record()
        fn()
        end.record()
        end.synchronize()
        if i >= warmup:
            times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="directory for table.csv and results.json")
    ap.add_argument("--n", type=int, default=8192)
    ap.add_argument("--vocab", type=int, nargs="+", default=[32000, 128256])
    ap.add_argument("--dtype", nargs="+", default=["bf16", "fp32"], choices=sorted(DTYPES))
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--cache-sweep", type=int, nargs="*", default=[0, 48, 96, 200],
                    help="KPOD_CUDA_ROW_CACHE_KB values tried for the kernel-only rows (bf16, largest V)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_loss_gpu: no CUDA device")
    ok, why = kpod_ops.fused_status("cuda")
    os.makedirs(args.out, exist_ok=True)
    try:
        from liger_kernel.transformers.functional import liger_cross_entropy
    except Exception as exc:  # not installed / incompatible
        liger_cross_entropy = None
        liger_note = f"{type(exc).__name__}: {exc}"
    else:
        liger_note = "ok"

    bw = copy_bandwidth()
    meta = {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "fused_available": [ok, why],
        "copy_bandwidth_GBps": bw / 1e9,
        "liger": liger_note,
        "cce": "skipped: linear cross-entropy (needs hidden states + classifier), not a logits loss",
        "timed": "forward+backward, median of CUDA-event timings",
    }
    print(f"# {meta['gpu']}  torch {meta['torch']}  copy bandwidth {bw / 1e9:.0f} GB/s  fused: {why}")
    rows: list[dict] = []

    def save():
        with open(os.path.join(args.out, "results.json"), "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)
        if rows:
            keys = list(dict.fromkeys(k for r in rows for k in r))
            with open(os.path.join(args.out, "table.csv"), "w", newline="") as f:
                wr = csv.DictWriter(f, fieldnames=keys)
                wr.writeheader()
                wr.writerows(rows)

    hdr = f"{'dtype':5} {'V':>7} {'method':16} {'ms':>9} {'x eager':>8} {'GB/s':>7} {'of copy':>8} {'extra mem':>10} {'x logits':>8}"
    print(hdr)
    def run_config(dname: str, V: int) -> None:
        dtype = DTYPES[dname]
        torch.cuda.empty_cache()
        g = torch.Generator(device="cuda").manual_seed(0)
        base = (torch.randn(args.n, V, device="cuda", generator=g) * 2).to(dtype)
        labels = torch.randint(0, V, (args.n,), device="cuda", generator=g)
        labels[torch.rand(args.n, device="cuda", generator=g) < 0.1] = -100
        w = torch.rand(args.n, device="cuda", generator=g)
        logits_bytes = base.numel() * base.element_size()
        methods = {}
        if ok:
            methods["fused"] = (lambda x: kpod_ops.keypoint_cross_entropy(
                x, labels, w, reduction="mean", validate=False, impl="fused"), 3)
            methods["fused_inplace"] = (lambda x: kpod_ops.keypoint_cross_entropy(
                x, labels, w, reduction="mean", validate=False, impl="fused", inplace_backward=True), 2)
        methods["eager"] = (lambda x: eager_loss(x, labels, w), None)
        if not args.no_compile:
            compiled = torch.compile(eager_loss, dynamic=False)
            methods["compile"] = (lambda x: compiled(x, labels, w), None)
        if liger_cross_entropy is not None:
            def liger(x):
                ell = liger_cross_entropy(x, labels, reduction="none")
                active = labels != -100
                return torch.where(active, w * ell.float(), 0.0).sum() / active.sum().clamp_min(1)
            methods["liger"] = (liger, None)
        eager_t = None
        for name, (fn, passes) in methods.items():
            rec = {"dtype": dname, "V": V, "N": args.n, "method": name}
            try:
                t0 = time.time()
                secs = time_fwd_bwd(fn, base, args.reps)
                rec["ms"] = secs * 1e3
                rec["extra_mem_bytes"] = peak_extra(fn, base)
                rec["extra_mem_x_logits"] = rec["extra_mem_bytes"] / logits_bytes
                if passes:
                    rec["passes"] = passes
                    rec["GBps"] = passes * logits_bytes / secs / 1e9
                    rec["frac_of_copy_bw"] = passes * logits_bytes / secs / bw
                rec["wall_s"] = time.time() - t0
            except Exception as exc:  # keep going: one broken baseline must not lose the rest
                rec["error"] = f"{type(exc).__name__}: {exc}"[:300]
            if name == "eager" and "ms" in rec:
                eager_t = rec["ms"]
            rows.append(rec)
            save()
        # the op alone (no API around it), and the row-cache sweep on the largest bf16 vocabulary
        if ok:
            x3 = base.view(1, args.n, V)
            t3 = torch.where(labels == -100, torch.full_like(labels, -1), labels).view(1, -1)
            rs = (w / args.n).view(1, -1).contiguous()
            scratch = base.clone().view(1, args.n, V)
            sweep = [None]
            if dname == "bf16" and V == max(args.vocab):
                sweep += list(args.cache_sweep)
            for kb in sweep:
                if kb is None:
                    os.environ.pop("KPOD_CUDA_ROW_CACHE_KB", None)
                else:
                    os.environ["KPOD_CUDA_ROW_CACHE_KB"] = str(kb)
                tag = "" if kb is None else f"_cache{kb}k"
                for name, fn, passes in (
                    ("kernel_fb" + tag, lambda: torch.ops.kpod.kce_forward_backward(x3, t3, rs, 0.0), 3),
                    ("kernel_inplace" + tag, lambda: torch.ops.kpod.kce_forward_backward_inplace(scratch, t3, rs, 0.0), 2),
                    ("kernel_fwd" + tag, lambda: torch.ops.kpod.kce_forward(x3, t3, 0.0), 1),
                ):
                    if kb is not None and name.startswith("kernel_fwd"):
                        continue
                    rec = {"dtype": dname, "V": V, "N": args.n, "method": name, "passes": passes}
                    try:
                        secs = time_op(fn, args.reps)
                        rec.update(ms=secs * 1e3, GBps=passes * logits_bytes / secs / 1e9,
                                   frac_of_copy_bw=passes * logits_bytes / secs / bw)
                    except Exception as exc:
                        rec["error"] = f"{type(exc).__name__}: {exc}"[:300]
                    rows.append(rec)
                    save()
            os.environ.pop("KPOD_CUDA_ROW_CACHE_KB", None)
            del scratch
        for rec in rows:
            if rec["dtype"] == dname and rec["V"] == V and "printed" not in rec:
                rec["printed"] = True
                if "error" in rec:
                    print(f"{dname:5} {V:>7} {rec['method']:16} ERROR {rec['error']}")
                    continue
                if eager_t and "extra_mem_bytes" in rec:
                    rec["speedup_vs_eager"] = eager_t / rec["ms"]
                sp = f"{rec['speedup_vs_eager']:.2f}" if "speedup_vs_eager" in rec else "-"
                gb = f"{rec['GBps']:.0f}" if "GBps" in rec else "-"
                fr = f"{100 * rec['frac_of_copy_bw']:.0f}%" if "frac_of_copy_bw" in rec else "-"
                mem = f"{rec['extra_mem_bytes'] / 2**20:.0f}MiB" if "extra_mem_bytes" in rec else "-"
                xm = f"{rec['extra_mem_x_logits']:.2f}" if "extra_mem_x_logits" in rec else "-"
                print(f"{dname:5} {V:>7} {rec['method']:16} {rec['ms']:9.3f} {sp:>8} {gb:>7} {fr:>8} {mem:>10} {xm:>8}",
                      flush=True)
        for rec in rows:
            rec.pop("printed", None)
        save()
        del base

    for dname in args.dtype:
        for V in args.vocab:
            run_config(dname, V)
    print(f"# written {os.path.join(args.out, 'table.csv')} and results.json")


if __name__ == "__main__":
    main()
