"""CPU benchmark of the fused keypoint cross-entropy: forward+backward time and peak extra memory.

Compared side by side in one run per configuration:
  eager     F.cross_entropy(logits.float(), labels, reduction="none"), weighted and masked with
            torch.where, then the mean over active positions (what users write today)
  compile   that eager reference under torch.compile
  fused     kpod_ops.keypoint_cross_entropy (one pass: loss and gradient while the row is in cache)
  inplace   the same with inplace_backward=True (gradient written over the logits)
  fused30   fused with 30% of positions active through loss_start (time only matters vs fused)
  exp       the floor of the functional op: one vectorised exp pass over fp32 logits of the same
            N×V into a fresh tensor, torch.exp(logits_fp32) (first-touch page faults included:
            the functional op must write a fresh N×V gradient)
  exp_out   the floor of the in-place mode: torch.exp(logits_fp32, out=existing)

Every method's time is also printed as a multiple of its floor (fused, fused30, eager and compile
against exp; inplace against exp_out), all measured in the same process.

Times are medians of forward+backward in one process (fresh logits every repetition, generated
outside the timed region; the repetitions go round-robin over the methods and floors). Peak extra
memory is measured per configuration in a fresh process: peak RSS above the RSS once the logits
exist (the logits' gradient counts, as it is new memory).
Every configuration runs with the default allocator and with THP_MEM_ALLOC_ENABLE=1.

The fused CPU kernels are built once per instruction set (default, avx2, avx512); every row records
the variant that ran (``cpu_capability``: the one chosen automatically unless ``--cpu-capabilities``
names some, each then run in its own worker with KPOD_CPU_CAPABILITY and ATEN_CPU_CAPABILITY set, so
that torch's own kernels, the floors included, run on the same instruction set: each variant against
its floor is what a CPU with no more than that instruction set would measure).

  python benchmarks/bench_loss.py            # quick default: V=32000, fp32+bf16, both allocators
  python benchmarks/bench_loss.py --full     # adds V=128256 (the README table)
  python benchmarks/bench_loss.py --cpu-capabilities default avx2 avx512 --modes fused inplace --no-memory
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

MODES = ["eager", "compile", "fused", "inplace", "fused30"]
FLOORS = ["exp", "exp_out"]
FLOOR_OF = {"eager": "exp", "compile": "exp", "fused": "exp", "fused30": "exp", "inplace": "exp_out"}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


class _Source(torch.autograd.Function):
    """Logits as a non-leaf tensor (like an lm_head output) whose gradient is dropped on arrival."""

    @staticmethod
    def forward(ctx, anchor, n, v, dtype, seed):
        # 256 random rows, tiled with a per-chunk offset: cheap to make (the timed work does not depend
        # on the values) and made in chunks, so no full-size fp32 temporary inflates the baseline RSS
        g = torch.Generator().manual_seed(seed)
        base = torch.randn(256, v, generator=g).mul_(2)
        out = torch.empty(n, v, dtype=dtype)
        for k, i in enumerate(range(0, n, 256)):
            out[i : i + 256] = base[: min(256, n - i)] + 0.01 * k
        return out

    @staticmethod
    def backward(ctx, grad):
        return None, None, None, None, None


def _inputs(n, v, seed=0):
    g = torch.Generator().manual_seed(1000 + seed)
    B = 4
    T = n // B
    labels = torch.randint(0, v, (B, T), generator=g)
    labels[:, :8] = -100
    weights = torch.rand(B, T, generator=g)
    start_all = torch.zeros(B, dtype=torch.long)
    start_30 = torch.full((B,), int(round(T * 0.7)), dtype=torch.long)
    return labels, weights, start_all, start_30


def _eager(logits, labels, weights, start):
    B, T, V = logits.shape
    ce = F.cross_entropy(logits.float().reshape(-1, V), labels.reshape(-1), reduction="none").reshape(B, T)
    active = (labels != -100) & (torch.arange(T).unsqueeze(0) >= start.unsqueeze(1))
    total = torch.where(active, weights * ce, torch.zeros(())).sum()
    return total / active.sum().clamp(min=1)


_COMPILED = None


def _loss_fn(mode):
    global _COMPILED
    import kpod_ops

    if mode == "eager":
        return _eager
    if mode == "compile":
        if _COMPILED is None:
            _COMPILED = torch.compile(_eager)
        return _COMPILED
    inplace = mode == "inplace"

    def fused(logits, labels, weights, start):
        return kpod_ops.keypoint_cross_entropy(
            logits, labels, weights, start, reduction="mean", inplace_backward=inplace, validate=False
        )

    return fused


def _one_step(mode, n, v, dtype, seed, inputs):
    labels, weights, start_all, start_30 = inputs
    anchor = torch.zeros((), requires_grad=True)
    logits = _Source.apply(anchor, n, v, dtype, seed).view(4, n // 4, v)
    start = start_30 if mode == "fused30" else start_all
    fn = _loss_fn(mode)
    t0 = time.perf_counter()
    loss = fn(logits, labels, weights, start)
    loss.backward()
    dt = time.perf_counter() - t0
    return dt, float(loss)


def _floor_step(mode, n, v, seed, existing):
    logits = _Source.apply(torch.zeros(()), n, v, torch.float32, seed)
    t0 = time.perf_counter()
    if mode == "exp":
        out = torch.exp(logits)
    else:
        out = torch.exp(logits, out=existing)
    dt = time.perf_counter() - t0
    del out
    return dt


def _cpu_capability():
    import kpod_ops._extension as extension

    return extension.cpu_capability()


def worker_time(n, v, dtype_name, reps, modes):
    """Median time of each method and floor; the repetitions go round-robin over them, so that the
    load of a shared machine falls on every method and its floor alike."""
    dtype = DTYPES[dtype_name]
    inputs = _inputs(n, v)
    existing = torch.empty(n, v)
    existing.fill_(0.0)  # touched once, so its pages exist
    for mode in modes:
        _one_step(mode, n, v, dtype, 0, inputs)  # warm-up (compiles for "compile")
    for mode in FLOORS:
        _floor_step(mode, n, v, 0, existing)
    times = {m: [] for m in [*modes, *FLOORS]}
    for r in range(reps):
        for mode in modes:
            times[mode].append(_one_step(mode, n, v, dtype, r + 1, inputs)[0])
        for mode in FLOORS:
            times[mode].append(_floor_step(mode, n, v, r + 1, existing))
    medians = {m: statistics.median(t) for m, t in times.items()}
    return {"cpu_capability": _cpu_capability(), "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(), **medians}


def _rss_peak_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def worker_memory(n, v, dtype_name, mode):
    dtype = DTYPES[dtype_name]
    inputs = _inputs(n, v)
    if mode == "compile":  # compile on a small problem first so compilation memory is not counted
        _one_step(mode, 64, v, dtype, 0, _inputs(64, v))
    anchor = torch.zeros((), requires_grad=True)
    logits = _Source.apply(anchor, n, v, dtype, 0).view(4, n // 4, v)
    labels, weights, start_all, start_30 = inputs
    start = start_30 if mode == "fused30" else start_all
    fn = _loss_fn(mode)
    base = _rss_peak_bytes()
    loss = fn(logits, labels, weights, start)
    loss.backward()
    return {"extra_bytes": max(0, _rss_peak_bytes() - base), "logits_bytes": logits.numel() * logits.element_size()}


def _spawn(args, thp, capability=None):
    env = dict(os.environ)
    env.pop("THP_MEM_ALLOC_ENABLE", None)
    if thp:
        env["THP_MEM_ALLOC_ENABLE"] = "1"
    if capability is not None:
        # torch's own kernels (the floors, eager, compile) on the same instruction set: the figures
        # of a CPU that has no more than this one
        env["KPOD_CPU_CAPABILITY"] = capability
        env["ATEN_CPU_CAPABILITY"] = capability
    res = subprocess.run([sys.executable, __file__, *args], env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"worker {args} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _line(row):
    extra = "" if row["speedup_vs_eager"] is None else f"  x{row['speedup_vs_eager']:5.2f} vs eager"
    extra += "" if row["vs_fused_time"] is None else f"  ({row['vs_fused_time']:.2f} of fused)"
    if row["extra_bytes"] is not None:
        extra += f"  extra {row['extra_bytes'] / 2**20:8.1f} MiB = {row['extra_x_logits']:.2f}x logits"
    return (
        f"V={row['V']:>6} {row['dtype']} {row['allocator']:>7} {row['cpu_capability'] or '?':>7} {row['mode']:>8}: "
        f"{row['time_s']:7.3f} s  {row['x_floor']:5.2f}x floor ({row['floor']} {row['floor_s']:.3f} s){extra}"
    )


def _print_variants(rows):
    """Each method's multiple of its floor, one column per CPU variant (a markdown table)."""
    caps = list(dict.fromkeys(r["cpu_capability"] for r in rows))
    print()
    print("| V | dtype | allocator | method | " + " | ".join(f"{c} s (× floor)" for c in caps) + " |")
    print("|---|---|---|---|" + "---|" * len(caps))
    key = lambda r: (r["V"], r["dtype"], r["allocator"], r["mode"])  # noqa: E731
    for k in dict.fromkeys(key(r) for r in rows):
        by = {r["cpu_capability"]: r for r in rows if key(r) == k}
        cells = [f"{by[c]['time_s']:.3f} ({by[c]['x_floor']:.2f})" if c in by else "-" for c in caps]
        print(f"| {k[0]} | {k[1]} | {k[2]} | {k[3]} | " + " | ".join(cells) + " |")


def machine():
    import kpod_ops

    return {**describe(), "kpod_ops_fused": kpod_ops.fused_status("cpu")[1]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="also V=128256")
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--vocab", type=int, nargs="*", default=None)
    ap.add_argument("--dtypes", nargs="*", default=["fp32", "bf16"])
    ap.add_argument("--allocators", nargs="*", default=["default", "thp"])
    ap.add_argument("--modes", nargs="*", choices=MODES, default=MODES, help="methods to time (default: all)")
    ap.add_argument("--cpu-capabilities", nargs="*", default=None,
                    help="CPU kernel variants to run side by side (default: the one chosen automatically)")
    ap.add_argument("--no-memory", action="store_true", help="skip the per-method peak-memory workers")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    ap.add_argument("--worker", choices=["time", "memory"], help=argparse.SUPPRESS)
    ap.add_argument("--v", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--dtype", help=argparse.SUPPRESS)
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    a = ap.parse_args()
    modes = [m for m in MODES if m in a.modes]
    if a.worker == "time":
        print(json.dumps(worker_time(a.n, a.v, a.dtype, a.reps, modes)))
        return
    if a.worker == "memory":
        print(json.dumps(worker_memory(a.n, a.v, a.dtype, a.mode)))
        return
    vocabs = a.vocab or ([32000, 128256] if a.full else [32000])
    info = machine()
    print(f"machine: {info}", flush=True)
    rows = []
    capabilities = a.cpu_capabilities or [None]
    for v in vocabs:
        for dt in a.dtypes:
            for alloc in a.allocators:
                thp = alloc == "thp"
                common = ["--n", str(a.n), "--v", str(v), "--dtype", dt, "--reps", str(a.reps)]
                for capability in capabilities:
                    times = _spawn(["--worker", "time", *common, "--modes", *modes], thp, capability)
                    for mode in modes:
                        mem = None if a.no_memory else _spawn(["--worker", "memory", *common, "--mode", mode], thp, capability)
                        floor = FLOOR_OF[mode]
                        row = {
                            "N": a.n, "V": v, "dtype": dt, "allocator": alloc, "mode": mode,
                            "cpu_capability": times["cpu_capability"],
                            "torch_cpu_capability": times.get("torch_cpu_capability"), "time_s": times[mode],
                            "speedup_vs_eager": times["eager"] / times[mode] if "eager" in times else None,
                            "vs_fused_time": times[mode] / times["fused"] if "fused" in times else None,
                            "floor": floor, "floor_s": times[floor], "x_floor": times[mode] / times[floor],
                            "extra_bytes": None if mem is None else mem["extra_bytes"],
                            "extra_x_logits": None if mem is None else mem["extra_bytes"] / mem["logits_bytes"],
                        }
                        rows.append(row)
                        print(_line(row), flush=True)
    os.makedirs(a.out, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = os.path.join(a.out, f"bench_loss_cpu_{stamp}.json")
    with open(path, "w") as f:
        json.dump({"machine": info, "rows": rows}, f, indent=1)
    print(f"saved {path}")
    if len({r["cpu_capability"] for r in rows}) > 1:
        _print_variants(rows)
    if modes != MODES or a.no_memory or len(capabilities) > 1:
        return
    print()
    print(
        "| V | dtype | allocator | exp floor s / exp out= s | eager s (× floor) | compile s (× floor) | "
        "fused s (× floor, × eager) | inplace s (× its floor, × eager) | fused, 30% active (÷ fused) | "
        "extra mem eager / compile / fused / inplace (× logits) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    key = lambda r: (r["V"], r["dtype"], r["allocator"])  # noqa: E731
    for k in sorted({key(r) for r in rows}, key=lambda x: (x[0], x[1] != "fp32", x[2] != "default")):
        by = {r["mode"]: r for r in rows if key(r) == k}
        print(
            f"| {k[0]} | {k[1]} | {k[2]} | {by['fused']['floor_s']:.3f} / {by['inplace']['floor_s']:.3f} | "
            f"{by['eager']['time_s']:.3f} ({by['eager']['x_floor']:.2f}) | "
            f"{by['compile']['time_s']:.3f} ({by['compile']['x_floor']:.2f}) | "
            f"{by['fused']['time_s']:.3f} ({by['fused']['x_floor']:.2f}, {by['fused']['speedup_vs_eager']:.1f}×) | "
            f"{by['inplace']['time_s']:.3f} ({by['inplace']['x_floor']:.2f}, {by['inplace']['speedup_vs_eager']:.1f}×) | "
            f"{by['fused30']['time_s']:.3f} ({by['fused30']['vs_fused_time']:.2f}) | "
            f"{by['eager']['extra_x_logits']:.2f} / {by['compile']['extra_x_logits']:.2f} / "
            f"{by['fused']['extra_x_logits']:.2f} / {by['inplace']['extra_x_logits']:.3f} |"
        )


if __name__ == "__main__":
    main()
