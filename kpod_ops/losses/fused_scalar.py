"""Scalar reductions of the fused loss with the logits' gradient produced in the forward pass.

One sweep over the logits gives the loss and ``row_scale·(softmax − (1−ε)·onehot − ε/V)``; the
backward pass only multiplies by the upstream gradient ``g`` (in fp32, on the device, skipped when
``g == 1``). The gradient is handed to autograd without aliasing anything this op uses again:

* an ordinary backward scales the buffer in place and gives it away (the op drops its reference;
  in the functional mode the buffer is a saved tensor, so autograd frees it with the graph);
* a backward that keeps the graph (``retain_graph=True``, ``create_graph=True``) returns a fresh
  scaled copy and leaves the buffer as it was, so every later backward is exact.

fp16 logits in the in-place mode do not round the gradient before ``g`` is known (a GradScaler
scale would act on fp16 values already flushed to zero): the forward pass computes only the loss
and the log-sum-exp, and backward writes ``g·row_scale·(softmax − …)``, rounded once, over the
logits. (The functional mode sends fp16 through the two-kernel path of the registered op.)

Double backward is refused with a clear error when it is attempted (the gradient is not
expressed in differentiable operations); ``impl="reference"`` supports it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

DOUBLE_BACKWARD = (
    b"keypoint_cross_entropy: the fused kernels do not support double backward (create_graph=True followed "
    b"by a backward through the gradient, e.g. a gradient penalty); use impl='reference' for higher-order gradients"
)

BUFFER, INPLACE, INPLACE_FP16 = "buffer", "inplace", "inplace_fp16"


@dataclass
class ScalarState:
    """What backward needs besides the saved per-row tensors."""

    mode: str  # BUFFER (fresh gradient), INPLACE (gradient over the logits), INPLACE_FP16 (later)
    logits3: torch.Tensor | None  # in place: the [B, T, V] logits buffer (detached)
    eps: float
    inv: torch.Tensor | float  # 1/denominator (0 when it is 0)
    den_is_weight_sum: bool


def refuse_double_backward(grads: tuple) -> tuple:
    """Outputs of a backward run under ``create_graph=True`` whose own backward raises clearly."""
    live = [g for g in grads if g is not None]
    if not live:
        return grads
    err = torch._C._functions.DelayedError(DOUBLE_BACKWARD, len(live))
    wrapped = err(*[g.detach().requires_grad_(True) for g in live])
    wrapped = wrapped if isinstance(wrapped, tuple) else (wrapped,)
    it = iter(wrapped)
    return tuple(None if g is None else next(it) for g in grads)


def _keep_graph() -> bool:
    return bool(torch._C._autograd._get_current_graph_task_keep_graph())


class ScalarLoss(torch.autograd.Function):
    """``Σ_rows where(nonzero, ω·ℓ, 0) · inv`` with the logits' gradient prepared in forward."""

    @staticmethod
    def forward(ctx, logits, weights_in, nll, buffer, lse, target, row_scale, read, nonzero, active, state):
        loss = torch.where(nonzero, row_scale * nll, 0.0).sum()  # row_scale = ω·inv on rows that count
        ctx.state = state
        ctx.buffer = buffer if state.mode == INPLACE else None  # aliases the logits: not a saved tensor
        # the loss value is saved as a copy: callers scale the returned loss in place (Trainer's
        # ``loss *= num_processes``), which must not invalidate the graph
        value = loss.detach().clone() if state.den_is_weight_sum else None
        # ℓ reaches d/dω on rows that count, and on ω = 0 rows where it is finite (a non-finite ℓ at
        # ω = 0 has no derivative: 0, as the row's every other contribution)
        grad_rows = read & (nonzero | torch.isfinite(nll)) if weights_in is not None else read
        ctx.save_for_backward(nll, buffer if state.mode == BUFFER else None, lse, target, row_scale, grad_rows, active, value)
        ctx.logits_shape = logits.shape
        ctx.weights_dtype = None if weights_in is None else weights_in.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        create_graph = torch.is_grad_enabled()
        with torch.no_grad():
            grads = ScalarLoss._gradients(ctx, grad_loss, _keep_graph() or create_graph)
        return refuse_double_backward(grads) if create_graph else grads

    @staticmethod
    def _gradients(ctx, grad_loss, keep: bool):
        nll, buffer, lse, target, row_scale, read, active, value = ctx.saved_tensors
        state: ScalarState = ctx.state
        g = grad_loss.detach().to(torch.float32).reshape(())
        grad_logits = grad_weights = None
        if ctx.needs_input_grad[0]:
            if state.mode == INPLACE_FP16:
                grad_nll = (row_scale * g).contiguous()
                zeros = torch.zeros_like(grad_nll)
                if keep:  # leave the logits intact for the next backward
                    grad = torch.ops.kpod.kce_backward(state.logits3, target, lse, grad_nll, zeros, state.eps)
                else:
                    torch.ops.kpod.kce_backward_inplace(state.logits3, target, lse, grad_nll, zeros, state.eps)
                    grad, state.logits3 = state.logits3, None
            else:
                if state.mode == INPLACE:
                    buffer = ctx.buffer
                if keep:
                    grad = buffer.clone()
                    torch.ops.kpod.scale_(grad, g)
                else:
                    torch.ops.kpod.scale_(buffer, g)
                    grad, ctx.buffer = buffer, None
            grad_logits = grad.view(ctx.logits_shape)
        if ctx.needs_input_grad[1]:
            # d/dω of Σ ω·ℓ·inv is ℓ·inv on every read row (ω = 0 included where ℓ is finite);
            # weighted_mean adds −L/Σω
            term = torch.where(read, nll, 0.0)
            if state.den_is_weight_sum:
                term = term - torch.where(active, value, 0.0)
            grad_weights = (term * state.inv * g).to(ctx.weights_dtype)
        return grad_logits, grad_weights, None, None, None, None, None, None, None, None, None


def fused_scalar_loss(
    logits: torch.Tensor,
    logits3: torch.Tensor,
    weights_in: torch.Tensor | None,
    target: torch.Tensor,
    row_scale: torch.Tensor,
    read: torch.Tensor,
    nonzero: torch.Tensor,
    active: torch.Tensor,
    inv: torch.Tensor | float,
    label_smoothing: float,
    den_is_weight_sum: bool,
    inplace: bool,
) -> torch.Tensor:
    """The scalar loss; ``row_scale`` is ``ω·inv`` on rows that count, 0 elsewhere (fp32)."""
    eps = float(label_smoothing)
    fp16 = logits3.dtype == torch.float16
    lse = buffer = None
    with torch.no_grad():
        if inplace and fp16:
            mode, kept = INPLACE_FP16, logits3.detach()
            nll, lse = torch.ops.kpod.kce_forward(kept, target, eps)
        elif inplace:
            # the gradient overwrites the logits; autograd's history is not rebased (for logits that are
            # a view, a rebase would make backward allocate and copy the whole base)
            mode, kept = INPLACE, None
            nll = torch.ops.kpod.kce_forward_backward_inplace(logits3, target, row_scale, eps)
            buffer = logits.detach()
        else:
            mode, kept = BUFFER, None
            nll, buffer = torch.ops.kpod.kce_forward_backward(logits3, target, row_scale, eps)
    state = ScalarState(mode, kept, eps, inv, den_is_weight_sum)
    loss = ScalarLoss.apply(logits, weights_in, nll, buffer, lse, target, row_scale, read, nonzero, active, state)
    if inplace:
        # what mark_dirty does: any other saved use of the logits now fails loudly in backward
        torch.autograd.graph.increment_version(logits)
    return loss
