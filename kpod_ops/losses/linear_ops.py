"""Registered ops of the fused linear keypoint cross-entropy (``torch.ops.kpod_linear.*``).

Each op takes the flattened ``hidden [N, H]``, the LM head ``weight [V, H]`` (``nn.Linear``
layout) and optional ``bias [V]``, and works on the rows selected by a boolean mask: those rows
are gathered (one device→host synchronisation, for ``nonzero``), processed in chunks of
``chunk_size`` rows (logits chunk → the fused CE kernel of ``torch.ops.kpod`` → the gradient
GEMMs), and the results scattered back. Peak extra memory is ``O(chunk_size × V)``; the full
``[N, V]`` logits never exist. Because the compaction happens *inside* the ops, they are opaque
to ``torch.compile`` (their fake kernels have data-independent shapes), so the data-dependent row
selection never reaches the traced graph.

``nll(hidden, weight, bias, target, use, label_smoothing, chunk_size, check) -> nll [N]``
    per-row cross-entropy of the selected rows (0 elsewhere), accumulation dtype; differentiable
    w.r.t. hidden, weight and bias (its backward is :func:`backward` with ``row_scale = grad_nll``,
    which recomputes the chunk logits: exact for any upstream gradient).
``forward_backward(hidden, weight, bias, target, use, row_scale, label_smoothing, chunk_size, check,
needs) -> (nll, grad_hidden, grad_weight, grad_bias)``
    one pass: ``nll`` and the gradients of ``Σ row_scale·nll``; gradients in the accumulation
    dtype (an empty tensor where ``needs`` says it is not wanted).
``backward(hidden, weight, bias, target, use, row_scale, label_smoothing, chunk_size, needs)
-> (grad_hidden, grad_weight, grad_bias)``
    the gradients of ``Σ row_scale·nll`` over the selected rows with ``row_scale != 0``,
    recomputing the logits.

``target`` holds the label each hidden row predicts (already re-aimed for the causal shift).
``check = [T, shift, flat]`` turns on label validation inside the op (an empty list turns it off):
an active label outside ``[0, V)`` raises :class:`~kpod_ops.errors.KPODInputError` naming the value
and its label position, in eager mode and under ``torch.compile`` alike. With validation off, such
a row's loss is NaN (never silently skipped).

``softcap`` (last argument of each op, ``0`` = none) soft-caps each chunk's logits before the
loss, ``z ← cap·tanh(z/cap)`` (Gemma 2/3's final logit soft-capping), and multiplies the chunk's
logit gradient by ``1 − tanh²(z/cap)``; gradient chunks then hold one more ``[chunk, V]`` buffer.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from ..errors import KPODInputError
from .inputs import accumulation_dtype

OPS_REGISTERED = hasattr(torch.ops, "kpod") and hasattr(torch.ops.kpod, "kce_forward_backward_inplace")


def _torch_at_least(major: int, minor: int) -> bool:
    return tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]) >= (major, minor)


# How a bf16/fp16 chunk's weight gradient reaches the fp32 accumulator on CUDA (same values, one
# rounding of each product to fp32 in every case; they differ in memory):
#   torch >= 2.10  addmm(acc, dzᵀ, h, out_dtype=fp32, out=acc): the GEMM adds into the accumulator
#                  itself (2.8 and 2.9 refuse an fp32 `self` with bf16/fp16 factors)
#   torch 2.8-2.9  mm(dzᵀ, h, out_dtype=fp32) into one [V, H] fp32 scratch buffer, then added
#   older          no mixed-precision GEMM: the chunk's factors are cast to fp32 first (as on the CPU)
if _torch_at_least(2, 10):
    _CUDA_WEIGHT_GRAD = "addmm_out"
elif _torch_at_least(2, 8):
    _CUDA_WEIGHT_GRAD = "mm_scratch"
else:
    _CUDA_WEIGHT_GRAD = "fp32_cast"


def _selected_rows(use: torch.Tensor, row_scale: torch.Tensor | None) -> tuple[torch.Tensor | None, int, int]:
    """``(idx, n_grad, n)``: the ``n`` selected rows, those with a non-zero ``row_scale`` first.

    Only the first ``n_grad`` rows take part in the gradient GEMMs; the others (selected for their
    loss alone, e.g. ω = 0 rows whose weight needs ℓ) are only run forward, so that a non-finite
    hidden row with a zero gradient row can never turn ``0·inf`` into NaN in the weight gradient.
    ``idx`` is None when every row is selected for the gradient (no gather needed).
    """
    N = use.numel()
    if row_scale is None:
        idx = use.nonzero().flatten()  # the one synchronisation of the call
        return (None if idx.numel() == N else idx), 0, idx.numel()
    key = torch.where(use & (row_scale != 0), 0, torch.where(use, 1, 2))
    # (sums, not bincount: no nondeterministic CUDA kernel under torch.use_deterministic_algorithms)
    n_grad, n_fwd = torch.stack([(key == 0).sum(), (key == 1).sum()]).tolist()  # the one synchronisation of the call
    if n_grad == N:
        return None, N, N
    idx = torch.argsort(key, stable=True)[: n_grad + n_fwd]
    return idx, n_grad, n_grad + n_fwd


def _chunks(n: int, chunk_size: int, n_grad: int) -> Iterator[tuple[int, int]]:
    """Chunks of at most ``chunk_size`` rows that never straddle the ``n_grad`` boundary."""
    step = max(1, int(chunk_size))
    for lo, hi in ((0, n_grad), (n_grad, n)):
        for start in range(lo, hi, step):
            yield start, min(hi, start + step)


def _check_labels(labels: torch.Tensor, idx: torch.Tensor | None, V: int, check: Sequence[int]) -> None:
    if not check or labels.numel() == 0:
        return
    bad = (labels < 0) | (labels >= V)
    if not bool(bad.any()):
        return
    j = int(bad.nonzero()[0])
    row = j if idx is None else int(idx[j])
    T, shift, flat = (int(c) for c in check)
    b, r = divmod(row, T)
    where = (r + shift,) if flat else (b, r + shift)
    raise KPODInputError(
        f"labels: expected values in [0, {V}) or ignore_index on active positions, got {int(labels[j])} at position {where}"
    )


def _kernel_target(labels: torch.Tensor, V: int) -> torch.Tensor:
    # the kernels skip target -1 and give a NaN row for any other value outside [0, V): send every
    # invalid label (possible only with validation off) to V so that none is silently skipped
    return torch.where((labels < 0) | (labels >= V), V, labels).reshape(1, -1).contiguous()


def _logits(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    z = h @ weight.t() if bias is None else torch.addmm(bias, h, weight.t())
    return z.unsqueeze(0)  # [1, C, V], contiguous: the kernels' layout


def _grad_weight_into(acc: torch.Tensor, dz: torch.Tensor, h: torch.Tensor, scratch: list[torch.Tensor]) -> None:
    """``acc += dzᵀ @ h`` accumulated in ``acc``'s dtype (fp32 for fp32/bf16/fp16 inputs).

    No ``[V, H]`` tensor is allocated per chunk: the product goes into ``acc`` itself, or (torch
    2.8-2.9 on CUDA) into one scratch buffer kept in ``scratch`` for the whole call.
    """
    if dz.dtype == acc.dtype:
        acc.addmm_(dz.t(), h)
    elif dz.is_cuda and _CUDA_WEIGHT_GRAD == "addmm_out":
        torch.addmm(acc, dz.t(), h, out_dtype=acc.dtype, out=acc)
    elif dz.is_cuda and _CUDA_WEIGHT_GRAD == "mm_scratch":
        if not scratch:
            scratch.append(torch.empty_like(acc))
        acc.add_(torch.mm(dz.t(), h, out_dtype=acc.dtype, out=scratch[0]))
    else:  # CPU (and CUDA before torch 2.8) has no mixed-precision mm: multiply in the accumulation dtype
        acc.addmm_(dz.t().to(acc.dtype), h.to(acc.dtype))


def _softcap_(z: torch.Tensor, cap: float, derivative: bool) -> torch.Tensor | None:
    """``z ← cap·tanh(z/cap)`` in place (the ops of Gemma's forward, in ``z``'s dtype); returns
    ``d(new z)/d(old z) = 1 − tanh²(z/cap)`` when ``derivative``."""
    z.div_(cap).tanh_()
    deriv = torch.mul(z, z).neg_().add_(1) if derivative else None  # one chunk-sized buffer, no temporaries
    z.mul_(cap)
    return deriv


def _run(*args: object) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`_loop` with autocast off: the ops compute in the dtype they are given (cast first)."""
    hidden = args[0]
    assert isinstance(hidden, torch.Tensor)
    with torch.autocast(hidden.device.type, enabled=False):
        return _loop(*args)


def _loop(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    target: torch.Tensor,
    use: torch.Tensor,
    row_scale: torch.Tensor | None,
    label_smoothing: float,
    chunk_size: int,
    check: Sequence[int],
    needs: Sequence[bool],
    want_nll: bool,
    softcap: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Shared loop: nll of the selected rows and, when ``row_scale`` is given, the gradients."""
    N, H = hidden.shape
    V = weight.shape[0]
    acc = accumulation_dtype(hidden)
    need_h, need_w, need_b = (bool(x) for x in needs) if row_scale is not None else (False, False, False)
    need_b = need_b and bias is not None
    nll = torch.zeros(N if want_nll else 0, dtype=acc, device=hidden.device)
    grad_h = torch.zeros((N, H) if need_h else (0,), dtype=acc, device=hidden.device)
    grad_w = torch.zeros((V, H) if need_w else (0,), dtype=acc, device=hidden.device)
    grad_b = torch.zeros(V if need_b else 0, dtype=acc, device=hidden.device)
    scratch: list[torch.Tensor] = []  # the weight gradient's scratch buffer, where one is needed (_grad_weight_into)
    idx, n_grad, n = _selected_rows(use, row_scale)
    labels = target if idx is None else target.index_select(0, idx)
    _check_labels(labels, idx, V, check)
    scale = None
    if row_scale is not None:
        scale = (row_scale if idx is None else row_scale.index_select(0, idx)).to(acc)
    for s, e in _chunks(n, chunk_size, n_grad):
        rows = None if idx is None else idx[s:e]
        h = hidden[s:e] if rows is None else hidden.index_select(0, rows)
        z = _logits(h, weight, bias)
        grad_chunk = scale is not None and s < n_grad
        deriv = _softcap_(z, softcap, grad_chunk) if softcap else None
        t = _kernel_target(labels[s:e], V)
        if not grad_chunk:
            out, _lse = torch.ops.kpod.kce_forward(z, t, float(label_smoothing))
        else:  # the gradient overwrites the chunk's logits (our own buffer)
            out = torch.ops.kpod.kce_forward_backward_inplace(z, t, scale[s:e].reshape(1, -1).contiguous(), float(label_smoothing))
            dz = z[0]
            if deriv is not None:  # through the soft-cap: dL/dz = dL/dy · (1 − tanh²)
                dz.mul_(deriv[0])
            if need_h:
                gh = (dz @ weight).to(acc)
                if rows is None:
                    grad_h[s:e] = gh
                else:
                    grad_h.index_copy_(0, rows, gh)
            if need_w:
                _grad_weight_into(grad_w, dz, h, scratch)
            if need_b:
                grad_b.add_(dz.sum(0, dtype=acc))
        if want_nll:
            if rows is None:
                nll[s:e] = out[0]
            else:
                nll.index_copy_(0, rows, out[0])
        # free this chunk (dz is a view of it) before the next one is allocated: one chunk alive at a time
        z = dz = h = out = deriv = None
    return nll, grad_h, grad_w, grad_b


@torch.library.custom_op("kpod_linear::nll", mutates_args=())
def nll(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    target: torch.Tensor,
    use: torch.Tensor,
    label_smoothing: float,
    chunk_size: int,
    check: Sequence[int],
    softcap: float = 0.0,
) -> torch.Tensor:
    return _run(hidden, weight, bias, target, use, None, label_smoothing, chunk_size, check, (), True, softcap)[0]


@nll.register_fake
def _nll_fake(hidden, weight, bias, target, use, label_smoothing, chunk_size, check, softcap=0.0):
    return hidden.new_empty(hidden.shape[0], dtype=accumulation_dtype(hidden))


@torch.library.custom_op("kpod_linear::forward_backward", mutates_args=())
def forward_backward(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    target: torch.Tensor,
    use: torch.Tensor,
    row_scale: torch.Tensor,
    label_smoothing: float,
    chunk_size: int,
    check: Sequence[int],
    needs: Sequence[bool],
    softcap: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _run(hidden, weight, bias, target, use, row_scale, label_smoothing, chunk_size, check, needs, True, softcap)


def _grad_fakes(hidden, weight, bias, needs):
    acc = accumulation_dtype(hidden)
    need_h, need_w, need_b = (bool(x) for x in needs)
    need_b = need_b and bias is not None
    return (
        hidden.new_empty(tuple(hidden.shape) if need_h else (0,), dtype=acc),
        hidden.new_empty(tuple(weight.shape) if need_w else (0,), dtype=acc),
        hidden.new_empty(weight.shape[0] if need_b else 0, dtype=acc),
    )


@forward_backward.register_fake
def _forward_backward_fake(hidden, weight, bias, target, use, row_scale, label_smoothing, chunk_size, check, needs,
                           softcap=0.0):
    return (hidden.new_empty(hidden.shape[0], dtype=accumulation_dtype(hidden)), *_grad_fakes(hidden, weight, bias, needs))


@torch.library.custom_op("kpod_linear::backward", mutates_args=())
def backward(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    target: torch.Tensor,
    use: torch.Tensor,
    row_scale: torch.Tensor,
    label_smoothing: float,
    chunk_size: int,
    needs: Sequence[bool],
    softcap: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    use = use & (row_scale != 0)
    return _run(hidden, weight, bias, target, use, row_scale, label_smoothing, chunk_size, (), needs, False, softcap)[1:]


@backward.register_fake
def _backward_fake(hidden, weight, bias, target, use, row_scale, label_smoothing, chunk_size, needs, softcap=0.0):
    return _grad_fakes(hidden, weight, bias, needs)


def _nll_setup(ctx, inputs, output):
    hidden, weight, bias, target, use, label_smoothing, chunk_size, _check, *rest = inputs
    ctx.save_for_backward(hidden, weight, bias, target, use)
    ctx.label_smoothing = label_smoothing
    ctx.chunk_size = chunk_size
    ctx.softcap = float(rest[0]) if rest else 0.0


def _nll_backward(ctx, grad_nll):
    hidden, weight, bias, target, use = ctx.saved_tensors
    if torch.is_grad_enabled():  # backward(create_graph=True): this backward is not differentiable
        raise RuntimeError(
            "kpod_linear::nll: second derivatives (create_graph=True, gradient penalties) are not supported by "
            "the fused linear loss; use keypoint_linear_cross_entropy_reference for them"
        )
    needs = list(ctx.needs_input_grad[:3])
    if not any(needs):
        return None, None, None, None, None, None, None, None, None
    gh, gw, gb = backward(
        hidden, weight, bias, target, use, grad_nll.to(accumulation_dtype(hidden)).contiguous(),
        ctx.label_smoothing, ctx.chunk_size, needs, ctx.softcap,
    )
    return (
        gh.to(hidden.dtype) if needs[0] else None,
        gw.to(weight.dtype) if needs[1] else None,
        gb.to(bias.dtype) if needs[2] and bias is not None else None,
        None, None, None, None, None, None,
    )


nll.register_autograd(_nll_backward, setup_context=_nll_setup)
