"""Time and peak memory of building a full KPOD schedule, per solver and dataset size.

Targets: 1,000,000 questions × up to 12 steps × 50 stages in ≤ 60 s and ≤ 4 GiB with the default
solver; and many clusters cost little more than few: 100,000 questions × 50 stages with K = 1000
clusters in ≤ 4× the time and ≤ 2× the memory of K = 5 (``--compare-clusters``, measured side by
side in one run, interleaved, median of ``--repeats``). Every configuration runs in a fresh
subprocess; peak memory is the peak RSS (VmHWM) minus the RSS once the inputs exist. The default
solver at the largest size also runs with ``THP_MEM_ALLOC_ENABLE=1`` (PyTorch's huge-page
allocations; the planner itself is NumPy).

    python benchmarks/bench_schedule.py                     # full run, writes benchmarks/results/bench_schedule.json
    python benchmarks/bench_schedule.py --quick             # small sizes only
    python benchmarks/bench_schedule.py --compare-clusters  # K = 5 vs K = 1000, writes bench_schedule_clusters.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from machine import describe, summary

ROOT = Path(__file__).resolve().parents[1]

# the sizes (questions) each solver handles in reasonable time
SIZES = {
    "ftgp": [10_000, 100_000, 1_000_000],
    "greedy_max": [10_000, 100_000, 1_000_000],
    "density_greedy": [10_000, 100_000, 1_000_000],
    "marginal_greedy": [10_000, 100_000],
    "brute_force": [16],
}


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def worker(solver: str, n: int, max_steps: int, stages: int, seed: int, all_max: bool = False, n_clusters: int = 5) -> dict:
    import numpy as np

    from kpod_ops.curriculum import ProgressiveSchedule, StepTable

    rng = np.random.default_rng(seed)
    steps = np.full(n, max_steps) if all_max else rng.integers(1, max_steps + 1, n)
    values = rng.gamma(2.0, 0.5, int(steps.sum()))  # per-step mean NLL in nats, order 0.1–3
    clusters = rng.integers(0, n_clusters, n)
    table = StepTable.from_flat(values, steps)
    base = _rss_kib("VmRSS")
    start = time.perf_counter()
    schedule = ProgressiveSchedule.build(table, clusters, n_stages=stages, solver=solver)
    seconds = time.perf_counter() - start
    peak = _rss_kib("VmHWM")
    last = schedule.records[-1]
    return {
        "solver": solver, "clusters": n_clusters, "questions": n, "steps": int(steps.sum()), "stages": stages, "seconds": round(seconds, 3),
        "peak_mib_above_inputs": round((peak - base) / 1024, 1), "peak_rss_mib": round(peak / 1024, 1),
        "realised_over_B_at_T": round(last.realised / schedule.config["total"], 4),
        "init_rounds": schedule.records[0].rounds, "jump_questions": schedule.jump()[0],
        "thp": os.environ.get("THP_MEM_ALLOC_ENABLE", "0"),
    }


def machine() -> dict:
    return describe()


def run_one(solver: str, n: int, args: argparse.Namespace, thp: bool = False, n_clusters: int = 5) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if thp:
        env["THP_MEM_ALLOC_ENABLE"] = "1"
    cmd = [sys.executable, __file__, "--worker", solver, str(n), str(args.max_steps), str(args.stages), str(args.seed)]
    if args.all_max:
        cmd.append("--all-max")
    cmd += ["--clusters", str(n_clusters)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def compare_clusters(args: argparse.Namespace, n: int = 100_000, ks: tuple[int, int] = (5, 1000)) -> None:
    """FTGP at ``n`` questions with few and with many clusters, interleaved runs, median of each."""
    info = machine()
    print(f"machine: {summary()}, numpy {info['numpy']} (shared machine: other jobs may have been running)")
    print(f"ftgp, {n:,} questions, steps uniform 1..{args.max_steps}, {args.stages} stages, "
          f"K = {ks[0]} vs K = {ks[1]}, {args.repeats} interleaved runs each (median)")
    runs: dict[int, list[dict]] = {k: [] for k in ks}
    for _ in range(args.repeats):
        for k in ks:
            runs[k].append(run_one("ftgp", n, args, n_clusters=k))
    def median(k: int, key: str) -> float:
        values = sorted(r[key] for r in runs[k])
        return values[len(values) // 2]

    few, many = ks
    time_ratio = median(many, "seconds") / median(few, "seconds")
    mem_ratio = median(many, "peak_mib_above_inputs") / max(median(few, "peak_mib_above_inputs"), 1e-9)
    for k in ks:
        print(f"K = {k:>5}: {median(k, 'seconds'):7.2f} s, peak {median(k, 'peak_mib_above_inputs'):7.1f} MiB above inputs "
              f"(runs: {', '.join(str(r['seconds']) for r in runs[k])} s)")
    print(f"K = {many} / K = {few}: time {time_ratio:.2f}x (target <= 4x), memory {mem_ratio:.2f}x (target <= 2x)")
    out = args.out if args.out.name != "bench_schedule.json" else args.out.with_name("bench_schedule_clusters.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"machine": info, "questions": n, "stages": args.stages, "max_steps": args.max_steps, "repeats": args.repeats,
              "time_ratio": round(time_ratio, 3), "memory_ratio": round(mem_ratio, 3),
              "runs": {str(k): runs[k] for k in ks}}
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"written {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-steps", type=int, default=12)
    parser.add_argument("--stages", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="sizes up to 100,000 only")
    parser.add_argument("--all-max", action="store_true", help="every question has exactly --max-steps steps (worst case)")
    parser.add_argument("--solvers", nargs="+", choices=sorted(SIZES), default=sorted(SIZES), help="solvers to run")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bench_schedule.json")
    parser.add_argument("--clusters", type=int, default=5, help=argparse.SUPPRESS)
    parser.add_argument("--compare-clusters", action="store_true", help="K = 5 vs K = 1000 at 100,000 questions")
    parser.add_argument("--repeats", type=int, default=3, help="runs per K with --compare-clusters (median)")
    parser.add_argument("--worker", nargs=5, metavar=("SOLVER", "N", "MAX_STEPS", "STAGES", "SEED"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        solver, n, max_steps, stages, seed = args.worker
        print(json.dumps(worker(solver, int(n), int(max_steps), int(stages), int(seed), args.all_max, args.clusters)))
        return
    if args.compare_clusters:
        compare_clusters(args)
        return
    info = machine()
    print(f"machine: {summary()}, numpy {info['numpy']}")
    dist = f"exactly {args.max_steps}" if args.all_max else f"uniform 1..{args.max_steps}"
    print(f"schedule: steps per question {dist}, {args.stages} stages, K = 5, "
          "β = 12, Δs = 1, init = rounds, d ~ Gamma(2, 0.5)")
    print(f"{'solver':>16} {'questions':>10} {'steps':>10} {'seconds':>8} {'peak MiB':>9} {'D/B at T':>9} {'THP':>4}")
    rows = []
    for solver, sizes in SIZES.items():
        if solver not in args.solvers:
            continue
        for n in sizes:
            if args.quick and n > 100_000:
                continue
            runs = [False, True] if solver == "ftgp" and n == max(sizes) else [False]
            for thp in runs:
                r = run_one(solver, n, args, thp)
                rows.append(r)
                print(f"{r['solver']:>16} {r['questions']:>10,} {r['steps']:>10,} {r['seconds']:>8.2f} "
                      f"{r['peak_mib_above_inputs']:>9.1f} {r['realised_over_B_at_T']:>9.4f} {r['thp']:>4}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {"machine": info, "max_steps": args.max_steps, "all_max": args.all_max, "stages": args.stages, "runs": rows}
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
