"""A whole training step with the KPOD loss against a plain SFT step (``kpod bench train-step``).

Forward + backward of a whole causal LM, random-initialised from a config shaped like
SmolLM2-135M (Llama, V = 49,152) or Qwen2.5-0.5B (Qwen2, V = 151,936) (nothing is downloaded),
on one batch of random tokens, with AdamW's step timed apart. Methods:

  hf              model(input_ids, labels=labels).loss: Hugging Face's own loss, plain SFT
                  (token mean, no weights); what users run today
  eager-weighted  KPOD written by hand on the logits: F.cross_entropy(reduction="none"), times
                  the token weights, positions before loss_start masked, ÷ active tokens
  kpod-logits     apply_kpod_loss(model, fused_linear=False): the fused loss on the logits
  kpod-linear     apply_kpod_loss(model) (the default): the loss from the hidden states, no logits
  backbone        forward + backward of the model without its LM head (limit row)
  head            the LM head's three matmuls alone, no loss: logits = X·Wᵀ, X·grad = G·W and
                  W·grad = Gᵀ·X over every position (limit row)

Truncation can only shorten the LM head and the loss, never the backbone, so the limit of a
KPOD step is ``backbone + active share × head``. The whole sequence stands for the rationale:
``--active 1.0`` trains on every label, ``0.3`` starts the loss at 70 % of each sequence (a
mid-curriculum stage). Every method sees the same batch; ``hf`` gets the same labels (-100 before
``loss_start``, as KPODCollator masks them) without the weights, which does not change its cost.

Each (method, activity) runs in a fresh process: the model, its gradients (kept allocated,
``zero_grad(set_to_none=False)``) and AdamW's state are built, one small warm-up step runs, then
the first full step measures the peak memory above that state — on the CPU the peak resident set
(Linux ``VmHWM``, reset through ``/proc/self/clear_refs`` just before the step) minus the resident
set then; on CUDA ``max_memory_allocated`` minus ``memory_allocated`` — and ``--repeats`` more
steps the time (median). The configurations alternate over ``--rounds`` rounds (the order
reversed every other round), so that a shared machine's load falls on all of them alike; each
figure is the median over the rounds. ``step_s`` is forward + backward, ``opt_s`` AdamW's step,
``tokens_per_s`` = batch × seq ÷ ``step_s``. Every result is appended as one JSON line (with the
machine, date, git commit and versions) to ``--out``.

  python benchmarks/bench_train_step.py --quick            # SmolLM2 shape, fewer repeats
  python benchmarks/bench_train_step.py                    # both shapes
  python benchmarks/bench_train_step.py --models tiny --batch 2 --seq 32 --rounds 1 --repeats 1
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
LOSS_METHODS = ("hf", "eager-weighted", "kpod-logits", "kpod-linear")
LIMIT_METHODS = ("backbone", "head")
METHODS = LOSS_METHODS + LIMIT_METHODS
DEFAULT_OUT = HERE / "results" / "train_step.jsonl"
# model name -> (config class family, config fields); every model ties its input and output embeddings
MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "smollm2-135m": ("llama", dict(vocab_size=49152, hidden_size=576, num_hidden_layers=30, num_attention_heads=9,
                                   num_key_value_heads=3, intermediate_size=1536, max_position_embeddings=8192,
                                   rms_norm_eps=1e-5, rope_theta=100000.0)),
    "qwen2.5-0.5b": ("qwen2", dict(vocab_size=151936, hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
                                   num_key_value_heads=2, intermediate_size=4864, max_position_embeddings=32768,
                                   rms_norm_eps=1e-6, rope_theta=1000000.0)),
    # tiny shapes of both families: the tests, and a look at the script's output in seconds
    "tiny": ("llama", dict(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, intermediate_size=128)),
    "tiny-qwen2": ("qwen2", dict(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, intermediate_size=128)),
}
SHAPES = {"cpu": (2, 512), "cuda": (8, 2048)}  # default batch x seq per device
DTYPES = ("fp32", "bf16")
TOKEN_WEIGHTS = ("random", "ones")
REQUIRED_KEYS = ("model", "active", "method", "step_s", "tokens_per_s", "peak_mib", "machine")


# ------------------------------------------------------------------------------------------- memory
def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status: expected a {field} line, got none")


class _CpuPeak:
    """Peak resident set above the resident set at ``start()``: VmHWM, reset through /proc/self/clear_refs."""

    what = "VmHWM after a clear_refs reset, minus VmRSS at the reset"

    def __init__(self) -> None:
        if not sys.platform.startswith("linux"):
            raise SystemExit(f"--device cpu: the peak memory is read from Linux's /proc/self (a resettable peak "
                             f"resident set), got platform {sys.platform}")
        self.base = 0

    def start(self) -> None:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current resident set (Linux >= 4.0)
        except OSError as exc:
            raise SystemExit(f"--device cpu: the peak memory needs a writable /proc/self/clear_refs, got {exc}") from exc
        self.base = _status_kib("VmRSS")

    def peak_mib(self) -> float:
        return (_status_kib("VmHWM") - self.base) / 1024


class _CudaPeak:
    """``max_memory_allocated`` above ``memory_allocated`` at ``start()``."""

    what = "torch.cuda.max_memory_allocated minus memory_allocated at the reset"

    def __init__(self) -> None:
        self.base = 0

    def start(self) -> None:
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        self.base = torch.cuda.memory_allocated()

    def peak_mib(self) -> float:
        import torch

        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - self.base) / 2**20


# ------------------------------------------------------------------------------------------- one configuration
def _batch(vocab: int, batch: int, seq: int, active: float, token_weights: str, device: Any, seed: int) -> dict:
    """Random tokens, labels masked before ``loss_start`` (as KPODCollator masks them), token weights, loss starts."""
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, seq), generator=g)
    if token_weights == "ones":
        weights = torch.ones(batch, seq)
    else:
        weights = torch.rand(batch, seq, generator=g) * 0.9 + 0.1
    start = min(seq - 1, int(round(seq * (1.0 - active))))
    loss_start = torch.full((batch,), start, dtype=torch.int64)
    labels = torch.where(torch.arange(seq) >= loss_start.unsqueeze(1), ids, -100)
    # the loss's active positions: a label, t >= loss_start and t >= 1 (the first token has no prediction)
    n_active = int(((labels != -100) & (torch.arange(seq) >= 1)).sum())
    out = {"input_ids": ids, "labels": labels, "token_weights": weights, "loss_start": loss_start}
    return {**{k: v.to(device) for k, v in out.items()}, "n_active": n_active}


def _model(name: str, device: Any) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    family, fields = MODELS[name]
    config_cls, model_cls = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}[family]
    config = config_cls(**fields, tie_word_embeddings=True, use_cache=False)
    torch.manual_seed(0)  # the same weights in every process
    model = model_cls(config).to(device=device, dtype=torch.float32)
    return model.train()


def _eager_weighted_loss(model: Any, b: dict) -> Any:
    """KPOD by hand on the logits: per-token cross-entropy, times the weights, masked before loss_start, ÷ active."""
    import torch
    import torch.nn.functional as F

    logits = model(input_ids=b["input_ids"]).logits  # [B, T, V]
    B, T, V = logits.shape
    # row t predicts the label at t + 1 (shift the labels, not the logits: no copy of the logits)
    target = F.pad(b["labels"], (0, 1), value=-100)[:, 1:]
    weights = F.pad(b["token_weights"], (0, 1))[:, 1:]
    position = torch.arange(1, T + 1, device=target.device)
    active = (target != -100) & (position >= b["loss_start"].unsqueeze(1))
    ce = F.cross_entropy(logits.float().reshape(-1, V), target.reshape(-1), reduction="none",
                         ignore_index=-100).reshape(B, T)
    return torch.where(active, weights * ce, 0.0).sum() / active.sum()


def _kpod_model(model: Any, method: str, device: Any) -> Any:
    """The model patched with apply_kpod_loss as a user would, refusing any fallback to another path."""
    import warnings

    import kpod_ops
    from kpod_ops.integrations.hf import apply_kpod_loss

    ok, reason = kpod_ops.fused_status(device)
    if not ok:
        raise SystemExit(f"{method}: expected kpod_ops' compiled kernel for {device}, got none ({reason}); build the "
                         "extension (bash scripts/setup.sh) so that the benchmark times the kernel, not the reference")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # fused_linear="auto" warns where it keeps the logits path: not this row
        if method == "kpod-logits":
            return apply_kpod_loss(model, fused_linear=False)
        return apply_kpod_loss(model)


def _kpod_loss(model: Any, b: dict, linear: bool) -> Any:
    out = model(input_ids=b["input_ids"], labels=b["labels"], token_weights=b["token_weights"],
                loss_start=b["loss_start"])
    if linear and out.logits is not None:
        raise SystemExit("kpod-linear: expected the patched model to train without logits, got logits")
    return out.loss


def _head_step(x: Any, w: Any) -> Any:
    """The LM head's three matmuls: logits X·Wᵀ, then G·W and Gᵀ·X with the logits standing in for G."""
    import torch

    logits = torch.mm(x, w.t())
    grad_x = torch.mm(logits, w)
    grad_w = torch.mm(logits.t(), x)
    return logits, grad_x, grad_w


def child(spec: dict) -> dict:
    """Run one configuration in this process and return its row (times in s, memory in MiB)."""
    import contextlib

    import torch

    device = torch.device(spec["device"])
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: expected a CUDA device, got torch.cuda.is_available() == False")
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    method, active, B, T = spec["method"], spec["active"], spec["batch"], spec["seq"]
    family, fields = MODELS[spec["model"]]
    V, H = fields["vocab_size"], fields["hidden_size"]
    bf16 = spec["dtype"] == "bf16"
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    memory = _CudaPeak() if device.type == "cuda" else _CpuPeak()
    b = _batch(V, B, T, active if active is not None else 1.0, spec["token_weights"], device, seed=1)
    small = _batch(V, 1, min(T, 16), active if active is not None else 1.0, spec["token_weights"], device, seed=2)
    row: dict[str, Any] = {"loss": None, "grad_norm": None, "opt_s": None, "opt_peak_mib": None, "opt_times_s": None,
                           "params": None}

    if method == "head":
        dt = torch.bfloat16 if bf16 else torch.float32
        g = torch.Generator().manual_seed(3)
        x = torch.randn(B * T, H, generator=g).to(device=device, dtype=dt)
        w = (torch.randn(V, H, generator=g) * H**-0.5).to(device=device, dtype=dt)
        _head_step(x[:16], w[:256])  # warm-up
        times = []
        for i in range(spec["repeats"] + 1):
            if i == 0:
                memory.start()
            sync()
            t0 = time.perf_counter()
            out = _head_step(x, w)
            sync()
            times.append(time.perf_counter() - t0)
            if i == 0:
                row["peak_mib"] = memory.peak_mib()
            del out
    else:
        model = _model(spec["model"], device)
        params = [p for p in model.parameters() if p.requires_grad]
        row["params"] = sum(p.numel() for p in params)
        if method in ("kpod-logits", "kpod-linear"):
            model = _kpod_model(model, method, device)
        loss_fn = {
            "hf": lambda b: model(input_ids=b["input_ids"], labels=b["labels"]).loss,
            "eager-weighted": lambda b: _eager_weighted_loss(model, b),
            "kpod-logits": lambda b: _kpod_loss(model, b, linear=False),
            "kpod-linear": lambda b: _kpod_loss(model, b, linear=True),
            "backbone": lambda b: model.model(input_ids=b["input_ids"]).last_hidden_state.float().sum(),
        }[method]
        optimizer = torch.optim.AdamW(params, lr=1e-5)

        def forward_backward(batch: dict) -> Any:
            with autocast():
                loss = loss_fn(batch)
            loss.backward()
            return loss.detach()

        # warm-up: lazy initialisation, then gradients and AdamW's state allocated (a step on zero gradients)
        forward_backward(small)
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        optimizer.zero_grad(set_to_none=False)
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)
        times, opt_times = [], []
        for i in range(spec["repeats"] + 1):
            if i == 0:
                memory.start()
            sync()
            t0 = time.perf_counter()
            loss = forward_backward(b)
            sync()
            times.append(time.perf_counter() - t0)
            if i == 0:
                row["peak_mib"] = memory.peak_mib()
                if method != "backbone":
                    row["loss"] = float(loss)
                    row["grad_norm"] = math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in params))
                memory.start()
            sync()
            t0 = time.perf_counter()
            optimizer.step()
            sync()
            opt_times.append(time.perf_counter() - t0)
            if i == 0:
                row["opt_peak_mib"] = memory.peak_mib()
            optimizer.zero_grad(set_to_none=False)
        row["opt_s"] = statistics.median(opt_times[1:])
        row["opt_times_s"] = opt_times

    import transformers
    from machine import describe

    import kpod_ops

    return {
        "model": spec["model"], "active": active, "method": method, "device": spec["device"], "dtype": spec["dtype"],
        "batch": B, "seq": T, "tokens": B * T, "vocab": V, "hidden": H, "layers": fields["num_hidden_layers"],
        "family": family, "token_weights": spec["token_weights"],
        "n_active": b["n_active"] if method in LOSS_METHODS else None,
        "active_share": b["n_active"] / (B * T) if method in LOSS_METHODS else None,
        "step_s": statistics.median(times[1:]), "first_step_s": times[0], "step_times_s": times,
        "memory_measure": memory.what, **row,
        "machine": describe(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "kpod_ops": kpod_ops.__version__},
    }


# ------------------------------------------------------------------------------------------- the run
def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(HERE.parent), *args], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip()


def _run_child(spec: dict) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=str(HERE))
    if out.returncode != 0:
        sys.stderr.write(out.stderr[-4000:])
        raise SystemExit(f"{spec['model']} {spec['method']} active={spec['active']}: the benchmark process failed "
                         f"(exit {out.returncode}, its stderr above)")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _configs(methods: list[str], actives: list[float]) -> list[tuple[str, float | None]]:
    """(method, active) pairs of one round: every loss method at every activity, each limit row once."""
    pairs: list[tuple[str, float | None]] = [(m, a) for a in actives for m in methods if m in LOSS_METHODS]
    return pairs + [(m, None) for m in methods if m in LIMIT_METHODS]


def _aggregate(runs: list[dict]) -> dict:
    """One row from the rounds of one configuration: medians of the per-round medians."""
    row = dict(runs[0])
    for key in ("step_s", "opt_s", "peak_mib", "opt_peak_mib"):
        values = [r[key] for r in runs if r[key] is not None]
        row[key] = statistics.median(values) if values else None
    row["tokens_per_s"] = row["tokens"] / row["step_s"]
    row["rounds"] = [{k: r[k] for k in ("step_s", "opt_s", "peak_mib", "opt_peak_mib", "first_step_s", "loss")}
                     for r in runs]
    return row


def _add_ratios(rows: list[dict]) -> None:
    """Ratios to ``hf`` at the same activity, the limit (backbone + active share × head) and the ratio to it."""
    by = {(r["model"], r["method"], r["active"]): r for r in rows}
    for r in rows:
        if r["method"] not in LOSS_METHODS:
            continue
        hf = by.get((r["model"], "hf", r["active"]))
        r["step_vs_hf"] = r["step_s"] / hf["step_s"] if hf else None
        r["peak_vs_hf"] = r["peak_mib"] / hf["peak_mib"] if hf and hf["peak_mib"] > 0 else None
        backbone, head = by.get((r["model"], "backbone", None)), by.get((r["model"], "head", None))
        if backbone and head:
            r["limit_s"] = backbone["step_s"] + r["active_share"] * head["step_s"]
            r["step_vs_limit"] = r["step_s"] / r["limit_s"]
        else:
            r["limit_s"] = r["step_vs_limit"] = None


def _fmt(value: float | None, spec: str) -> str:
    """``format(value, spec)``, or a dash as wide (``spec`` starts with the width)."""
    return "-".rjust(int(spec.split(".")[0])) if value is None else format(value, spec)


def _print_table(rows: list[dict], model: str) -> None:
    mine = [r for r in rows if r["model"] == model]
    first = mine[0]
    print(f"\n{model}: {first['batch']} x {first['seq']} tokens, {first['dtype']}, {first['device']}, "
          f"{first['machine']['torch_threads']} threads, {first['layers']} layers, V = {first['vocab']}")
    print(f"{'active':>7s}  {'method':15s} {'step s':>8s} {'tok/s':>8s} {'x hf':>6s} {'peak MiB':>9s} {'x hf':>6s} "
          f"{'opt s':>7s} {'x limit':>8s} {'loss':>9s}")
    for r in mine:
        active = "-" if r["active"] is None else f"{r['active']:.0%}"
        print(f"{active:>7s}  {r['method']:15s} {r['step_s']:8.3f} {r['tokens_per_s']:8.0f} "
              f"{_fmt(r.get('step_vs_hf'), '6.2f')} {r['peak_mib']:9.0f} {_fmt(r.get('peak_vs_hf'), '6.2f')} "
              f"{_fmt(r['opt_s'], '7.3f')} {_fmt(r.get('step_vs_limit'), '8.2f')} {_fmt(r['loss'], '9.5f')}")
    for r in mine:
        if r["method"] == "kpod-linear" and r.get("limit_s") is not None:
            print(f"  limit at {r['active']:.0%} active: backbone + {r['active_share']:.3f} x head = {r['limit_s']:.3f} s;"
                  f" kpod-linear / limit = {r['step_vs_limit']:.2f}")


def plot(rows: list[dict], path: Path) -> bool:
    """Step time and peak memory per method and activity, with the limit, one column per model; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(2, len(models), figsize=(6 * len(models), 7), squeeze=False)
    for col, model in enumerate(models):
        mine = [r for r in rows if r["model"] == model and r["method"] in LOSS_METHODS]
        actives = list(dict.fromkeys(r["active"] for r in mine))
        methods = [m for m in LOSS_METHODS if any(r["method"] == m for r in mine)]
        width = 0.8 / (len(methods) + 1)
        for row_i, (key, label) in enumerate((("step_s", "forward + backward, s"), ("peak_mib", "peak MiB above state"))):
            ax = axes[row_i][col]
            for j, method in enumerate(methods):
                values = [next((r[key] for r in mine if r["method"] == method and r["active"] == a), 0.0) for a in actives]
                ax.bar([i + j * width for i in range(len(actives))], values, width, label=method)
            limits = [next((r for r in mine if r["active"] == a and r.get("limit_s") is not None), None) for a in actives]
            if key == "step_s" and any(limits):
                backbone = next(r["step_s"] for r in rows if r["model"] == model and r["method"] == "backbone")
                at = [i + len(methods) * width for i in range(len(actives))]
                ax.bar(at, [backbone if r else 0.0 for r in limits], width, label="limit: backbone", color="0.45")
                ax.bar(at, [r["limit_s"] - backbone if r else 0.0 for r in limits], width, bottom=backbone,
                       label="limit: active share x head", color="0.75", hatch="//")
            bars = len(methods) + (1 if key == "step_s" and any(limits) else 0)
            ax.set_xticks([i + width * (bars - 1) / 2 for i in range(len(actives))],
                          [f"{a:.0%} active" for a in actives])
            ax.set_ylabel(label)
            ax.set_title(model if row_i == 0 else "")
            if row_i == 0 and col == 0:
                ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
        return value
    return parse


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1], got {text}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="the SmolLM2 shape alone, 2 rounds of 1 timed step (under 10 minutes on 2 CPU cores)")
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=None,
                   help="default: smollm2-135m qwen2.5-0.5b (--quick: smollm2-135m)")
    p.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    p.add_argument("--active", nargs="+", type=_fraction, default=[1.0, 0.3],
                   help="fractions of each sequence in the loss (default: 1.0 0.3)")
    p.add_argument("--batch", type=_positive(int), default=None, help="sequences per step (default: 2 on cpu, 8 on cuda)")
    p.add_argument("--seq", type=_positive(int), default=None, help="tokens per sequence (default: 512 on cpu, 2048 on cuda)")
    p.add_argument("--repeats", type=_positive(int), default=None,
                   help="timed steps after the first (memory) step, per process (default: 2; --quick: 1)")
    p.add_argument("--rounds", type=_positive(int), default=None,
                   help="fresh processes per configuration, alternating (default: 3; --quick: 2)")
    p.add_argument("--threads", type=_positive(int), default=None, help="torch threads (default: torch's own)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--dtype", choices=DTYPES, default=None,
                   help="fp32, or bf16 under torch.autocast with fp32 weights (default: fp32 on cpu, bf16 on cuda)")
    p.add_argument("--token-weights", choices=TOKEN_WEIGHTS, default="random",
                   help="random in [0.1, 1) (default), or ones (then every method computes hf's loss)")
    p.add_argument("--out", default=str(DEFAULT_OUT), help=f"JSON lines appended here (default: {DEFAULT_OUT})")
    p.add_argument("--plot", default=None, help="the plot's path (default: --out with .png)")
    p.add_argument("--no-plot", action="store_true", help="no plot")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.models is None:
        args.models = ["smollm2-135m"] if args.quick else ["smollm2-135m", "qwen2.5-0.5b"]
    args.repeats = args.repeats or (1 if args.quick else 2)
    args.rounds = args.rounds or (2 if args.quick else 3)
    default_batch, default_seq = SHAPES[args.device]
    args.batch = args.batch or default_batch
    args.seq = args.seq or default_seq
    if args.seq < 2:
        p.error(f"--seq: expected at least 2 tokens (one prediction), got {args.seq}")
    args.dtype = args.dtype or ("bf16" if args.device == "cuda" else "fp32")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        sys.path.insert(0, str(HERE))
        print(json.dumps(child(json.loads(args.child))))
        return 0
    started = time.perf_counter()
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    commit = _git("rev-parse", "HEAD")
    dirty = None if commit is None else bool(_git("status", "--porcelain", "--untracked-files=no"))
    if commit is None:
        print("not run from a git checkout: git_commit is recorded as null", file=sys.stderr)
    rows: list[dict] = []
    for model in args.models:
        runs: dict[tuple[str, float | None], list[dict]] = {}
        configs = _configs(args.methods, args.active)
        for round_i in range(args.rounds):
            for method, active in (configs if round_i % 2 == 0 else configs[::-1]):
                spec = {"model": model, "method": method, "active": active, "batch": args.batch, "seq": args.seq,
                        "repeats": args.repeats, "device": args.device, "dtype": args.dtype,
                        "token_weights": args.token_weights, "threads": args.threads}
                run = _run_child(spec)
                runs.setdefault((method, active), []).append(run)
                active_text = "-" if active is None else f"{active:.0%}"
                print(f"round {round_i + 1}/{args.rounds} {model} {active_text:>4s} {method:15s} step {run['step_s']:.3f} s"
                      f"  peak {run['peak_mib']:.0f} MiB", flush=True)
        rows += [_aggregate(runs[c]) for c in configs]
    _add_ratios(rows)
    options = {k: v for k, v in vars(args).items() if k not in ("child",)}
    for r in rows:
        r.update(date=date, git_commit=commit, git_dirty=dirty, run_id=date, options=options)
    for model in args.models:
        _print_table(rows, model)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    print(f"\nappended {len(rows)} rows to {out}")
    if not args.no_plot:
        path = Path(args.plot) if args.plot else out.with_suffix(".png")
        if plot(rows, path):
            print(f"plot: {path}")
        else:
            print("plot skipped: matplotlib is not installed (pip install 'kpod_ops[plots]')")
    print(f"took {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
