"""torch.library registrations for the compiled ops: fake (meta) kernels and autograd.

The schemas live in ``csrc/kpod.cpp`` (``TORCH_LIBRARY(kpod, m)``); the CPU and CUDA kernels in
``csrc/cpu`` and ``csrc/cuda``. Semantics shared by every op (``[B, T, V]`` logits with the
vocabulary dimension contiguous and any other strides; ``target[b, t] == -1`` means the row is
skipped: never read, loss 0, gradient row 0):

``kce_forward(logits, target, label_smoothing) -> (nll, lse)``
    per-row ``nll = lse - (1-eps) z_y - (eps/V) sum_v z_v`` and ``lse``, fp32 (fp64 for fp64).
``kce_backward(logits, target, lse, grad_nll, grad_lse, label_smoothing) -> grad_logits``
    ``(g_nll + g_lse) softmax - g_nll ((1-eps) onehot + eps/V)``, a fresh contiguous tensor.
``kce_forward_backward(logits, target, row_scale, label_smoothing) -> (nll, grad_logits)``
    one pass: ``nll`` and ``row_scale * (softmax - (1-eps) onehot - eps/V)`` (exact zeros where
    ``row_scale == 0``).
``kce_forward_backward_inplace(logits!, target, row_scale, label_smoothing) -> nll``
    the same, the gradient written over the logits.
``kce_backward_inplace(logits!, target, lse, grad_nll, grad_lse, label_smoothing) -> ()``
    ``kce_backward``'s gradient written over the logits (each element read before it is written).
``scale_(x!, scale)``: ``x *= scale`` read on the device, multiplied in fp32 (fp64 for fp64) and
    rounded once (the scale is never rounded to x's dtype); untouched when ``scale == 1``.

Double backward through ``kce_forward`` is refused with a clear error when attempted.
"""

from __future__ import annotations

import torch

from .._extension import _LOAD_ERROR
from .fused_scalar import refuse_double_backward
from .inputs import accumulation_dtype

REGISTERED = False


def _register() -> None:
    global REGISTERED

    @torch.library.register_fake("kpod::kce_forward")
    def _kce_forward_fake(logits, target, label_smoothing):
        torch._check(logits.dim() == 3, lambda: "kce_forward: logits must be [B, T, V]")
        torch._check(target.shape == logits.shape[:2], lambda: "kce_forward: target must be [B, T]")
        out = logits.new_empty(logits.shape[:2], dtype=accumulation_dtype(logits))
        return out, torch.empty_like(out)

    @torch.library.register_fake("kpod::kce_backward")
    def _kce_backward_fake(logits, target, lse, grad_nll, grad_lse, label_smoothing):
        torch._check(logits.dim() == 3, lambda: "kce_backward: logits must be [B, T, V]")
        return logits.new_empty(logits.shape)

    @torch.library.register_fake("kpod::kce_forward_backward")
    def _kce_forward_backward_fake(logits, target, row_scale, label_smoothing):
        torch._check(logits.dim() == 3, lambda: "kce_forward_backward: logits must be [B, T, V]")
        return logits.new_empty(logits.shape[:2], dtype=accumulation_dtype(logits)), logits.new_empty(logits.shape)

    @torch.library.register_fake("kpod::kce_forward_backward_inplace")
    def _kce_forward_backward_inplace_fake(logits, target, row_scale, label_smoothing):
        return logits.new_empty(logits.shape[:2], dtype=accumulation_dtype(logits))

    @torch.library.register_fake("kpod::kce_backward_inplace")
    def _kce_backward_inplace_fake(logits, target, lse, grad_nll, grad_lse, label_smoothing):
        return None

    @torch.library.register_fake("kpod::scale_")
    def _scale_fake(x, scale):
        return None

    def _setup_forward(ctx, inputs, output):
        logits, target, label_smoothing = inputs
        _, lse = output
        ctx.save_for_backward(logits, target, lse)
        ctx.label_smoothing = label_smoothing

    def _backward_forward(ctx, grad_nll, grad_lse):
        logits, target, lse = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None
        create_graph = torch.is_grad_enabled() and not torch.compiler.is_compiling()
        with torch.no_grad():
            zeros = None
            if grad_nll is None or grad_lse is None:
                zeros = torch.zeros_like(lse)
            grad_nll = zeros if grad_nll is None else grad_nll.detach().contiguous()
            grad_lse = zeros if grad_lse is None else grad_lse.detach().contiguous()
            grad = torch.ops.kpod.kce_backward(logits.detach(), target, lse.detach(), grad_nll, grad_lse, ctx.label_smoothing)
        grads = (grad, None, None)
        return refuse_double_backward(grads) if create_graph else grads

    torch.library.register_autograd("kpod::kce_forward", _backward_forward, setup_context=_setup_forward)
    REGISTERED = True


if _LOAD_ERROR is None:
    _register()
