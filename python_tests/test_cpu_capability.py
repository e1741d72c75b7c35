"""The CPU kernels' instruction-set variants: each one this CPU runs matches the reference, and
the variant is chosen as documented (torch's own capability by default, KPOD_CPU_CAPABILITY to
force one, a clear error for a name that cannot run)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from loss_helpers import FUSED_CPU, check_against_reference, fused, run

import kpod_ops
import kpod_ops._extension as extension

pytestmark = pytest.mark.skipif(
    not FUSED_CPU or not hasattr(torch.ops.kpod, "cpu_capability"), reason="kpod_ops._C with CPU variants not built"
)

VARIANTS = list(extension.cpu_capabilities()) if FUSED_CPU else []
ORDER = ["default", "avx2", "avx512"]


@pytest.fixture
def variant(request, monkeypatch):
    """Runs the test body with the CPU variant ``request.param`` in force, then the default again."""
    monkeypatch.delenv("KPOD_CPU_CAPABILITY", raising=False)
    extension._set_cpu_capability(request.param)
    assert extension.cpu_capability() == request.param
    yield request.param
    extension._set_cpu_capability("")


by_variant = pytest.mark.parametrize("variant", VARIANTS, indirect=True)


def _problem(B, T, V, dtype, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    logits = (scale * torch.randn(B, T, V, generator=g)).to(dtype)
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[0, 1] = -100
    weights = torch.rand(B, T, generator=g) + 0.1
    weights[1, 2] = 0.0
    start = torch.tensor([2, 0])[:B]
    return logits, labels, weights, start


# V = 1 and 37: tails shorter than any vector step; 1000: rows of many steps
CASES = [(torch.float32, 1), (torch.float32, 37), (torch.float32, 1000), (torch.bfloat16, 37), (torch.bfloat16, 1000),
         (torch.float16, 37), (torch.float64, 37)]


@by_variant
@pytest.mark.parametrize(("dtype", "V"), CASES, ids=[f"{d}-V{v}" for d, v in CASES])
def test_each_variant_matches_the_reference(variant, dtype, V):
    logits, labels, weights, start = _problem(2, 5, V, dtype)
    # the scalar reductions take the one-pass kernel, "none" the forward kernel and the backward one
    for reduction, eps in (("mean", 0.0), ("none", 0.1), ("weighted_mean", 0.1)):
        check_against_reference(logits, labels, weights, start, reduction=reduction, label_smoothing=eps)


def _inplace(x, labels, w, start, **kw):
    return fused(x * 1.0, labels, w, start, inplace_backward=True, **kw)  # a non-leaf the gradient may overwrite


@by_variant
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("budget_kb", [None, "1"], ids=["in-cache", "blocked"])
def test_each_variant_matches_the_reference_in_place_and_on_blocked_rows(variant, dtype, budget_kb, monkeypatch):
    """Rows longer than the L2 budget go block by block (forced here with a 1 KiB budget)."""
    if budget_kb is not None:
        monkeypatch.setenv("KPOD_CPU_ROW_BUDGET_KB", budget_kb)
    logits, labels, weights, start = _problem(2, 4, 2053, dtype, seed=1)
    functional = check_against_reference(logits, labels, weights, start, reduction="sum", label_smoothing=0.05)
    in_place = run(_inplace, logits, labels, weights, start, reduction="sum", label_smoothing=0.05)
    torch.testing.assert_close(in_place[0], functional[0], rtol=1e-6, atol=1e-6)
    # the in-place mode rounds the same fp32 values once, like the functional one (fp16: later, once scaled)
    tol = {torch.float32: 1e-6, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-10}[dtype]
    torch.testing.assert_close(in_place[1].float(), functional[1].float(), rtol=tol, atol=tol * 1e-2)
    torch.testing.assert_close(in_place[2], functional[2], rtol=1e-6, atol=1e-6)


@by_variant
def test_each_variant_scales_reduced_precision_gradients_once(variant):
    """kpod::scale_ on bf16/fp16 (the vector loop of each variant, its tail included)."""
    for dtype in (torch.bfloat16, torch.float16):
        x = torch.randn(3, 77).to(dtype)
        expected = (x.float() * (1 / 3)).to(dtype)
        got = x.clone()
        torch.ops.kpod.scale_(got, torch.tensor(1 / 3, dtype=torch.float64))
        assert torch.equal(got, expected)


@by_variant
def test_each_variant_keeps_non_finite_rows_exact(variant):
    """inf/NaN logits take the exact scalar path in every variant: the same pattern as the reference."""
    logits, labels, weights, start = _problem(2, 5, 40, torch.float32)
    logits[0, 3, 7] = float("inf")
    logits[1, 4, 0] = float("nan")
    logits[1, 1] = float("-inf")
    logits[1, 1, labels[1, 1]] = 0.0
    check_against_reference(logits, labels, weights, start, reduction="none")


def test_variants_are_listed_lowest_first_and_include_the_one_in_force():
    assert VARIANTS and VARIANTS[0] == "default"
    assert VARIANTS == [v for v in ORDER if v in VARIANTS]
    assert extension.cpu_capability() in VARIANTS
    ok, why = kpod_ops.fused_status("cpu")
    assert ok and f"the {extension.cpu_capability()} variant" in why


def test_an_unknown_variant_is_refused_and_the_one_in_force_stays():
    before = extension.cpu_capability()
    with pytest.raises(RuntimeError, match=r"_set_cpu_capability: expected one of default.*got 'sse9'"):
        extension._set_cpu_capability("sse9")
    assert extension.cpu_capability() == before


def test_a_variant_this_cpu_cannot_run_is_refused():
    built = set(ORDER) if os.uname().machine in ("x86_64", "AMD64") else {"default"}
    missing = sorted(built - set(VARIANTS))
    if not missing:
        pytest.skip(f"this CPU runs every variant ({', '.join(VARIANTS)})")
    with pytest.raises(RuntimeError, match=f"cannot run the {missing[0]} variant"):
        extension._set_cpu_capability(missing[0])


def test_an_invalid_environment_value_makes_every_cpu_call_raise(monkeypatch):
    """KPOD_CPU_CAPABILITY is re-read by _set_cpu_capability(""); an invalid value stops the CPU kernels."""
    logits, labels, weights, start = _problem(2, 5, 11, torch.float32)
    monkeypatch.setenv("KPOD_CPU_CAPABILITY", "avx3")
    try:
        with pytest.raises(RuntimeError, match="KPOD_CPU_CAPABILITY: expected one of default.*got 'avx3'"):
            extension._set_cpu_capability("")
        assert extension.cpu_capability() is None and "avx3" in str(extension.cpu_capability_error())
        assert kpod_ops.fused_status("cpu") == (False, extension.cpu_capability_error())
        for impl in ("auto", "fused"):  # never the reference in its place
            with pytest.raises(RuntimeError, match="KPOD_CPU_CAPABILITY.*avx3"):
                kpod_ops.keypoint_cross_entropy(logits, labels, weights, start, impl=impl)
        with pytest.raises(RuntimeError, match="KPOD_CPU_CAPABILITY.*avx3"):
            torch.ops.kpod.kce_forward(logits, torch.zeros(2, 5, dtype=torch.long), 0.0)
        reference = kpod_ops.keypoint_cross_entropy(logits, labels, weights, start, impl="reference")
        assert torch.isfinite(reference)
        monkeypatch.setenv("KPOD_CPU_CAPABILITY", VARIANTS[0].upper())  # names are case-insensitive
        assert extension._set_cpu_capability("") == VARIANTS[0]
    finally:
        monkeypatch.delenv("KPOD_CPU_CAPABILITY", raising=False)
        extension._set_cpu_capability("")
    assert extension.cpu_capability_error() is None


def test_the_default_follows_torch():
    torch_cap = torch.backends.cpu.get_cpu_capability().lower()
    below = [v for v in VARIANTS if torch_cap in ORDER and ORDER.index(v) <= ORDER.index(torch_cap)]
    assert extension._set_cpu_capability("") == (below[-1] if below else "default")


# at import, in a fresh process: an invalid KPOD_CPU_CAPABILITY is reported, and without it the
# variant follows torch's own capability, which ATEN_CPU_CAPABILITY lowers
_PROBE = """
import os, torch, kpod_ops, kpod_ops._extension as e
print(e.cpu_capability(), e.cpu_capability_error(), sep="|")
del os.environ["KPOD_CPU_CAPABILITY"]
print(e._set_cpu_capability(""), torch.backends.cpu.get_cpu_capability(), sep="|")
"""


def test_the_environment_is_read_at_import_and_aten_cpu_capability_lowers_the_default():
    env = {k: v for k, v in os.environ.items() if k not in ("KPOD_CPU_CAPABILITY", "ATEN_CPU_CAPABILITY")}
    env.update(KPOD_CPU_CAPABILITY="fastest", ATEN_CPU_CAPABILITY="default")
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    first, second = (line.split("|") for line in out.stdout.strip().splitlines()[-2:])
    assert first[0] == "None" and "KPOD_CPU_CAPABILITY: expected one of default" in first[1] and "'fastest'" in first[1]
    assert second == ["default", "DEFAULT"]
