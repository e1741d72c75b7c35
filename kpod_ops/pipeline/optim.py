"""The optimiser and learning-rate schedule shared by the warm-up and the distillation loop."""

from __future__ import annotations

import math

import torch


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float = 0.0) -> torch.optim.AdamW:
    """AdamW over the trainable parameters (LoRA adapters only, when the model has them)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, foreach=False)


def lr_at(step: int, total: int, base: float, warmup_ratio: float, min_ratio: float = 0.1) -> float:
    """Linear warm-up over ``warmup_ratio`` of the steps, then cosine decay to ``min_ratio × base``.

    A pure function of the step, so a resumed run needs no scheduler state.
    """
    warm = max(1, int(round(warmup_ratio * total)))
    if step < warm:
        return base * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return base * (min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def autocast(device: torch.device, precision: str):
    """bf16 autocast on the model's device when ``precision == "bf16"``; a no-op context for fp32."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
