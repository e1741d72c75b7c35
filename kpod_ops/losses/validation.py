"""``validate=True``: the value checks of the loss as one opaque op, so they run the same way in
eager mode and under ``torch.compile(fullgraph=True)``.

Reading values (is any active label outside ``[0, V)``? any active weight negative?) needs the data
on the host: one device→host synchronisation on CUDA, none on the CPU. Inside a custom op that read
is invisible to the compiler, so compiled code keeps the check without a graph break and raises the
same :class:`~kpod_ops.errors.KPODInputError` with the same message as eager code. The op returns a
copy of the labels that the loss then uses, so the compiler can never drop the check as dead code.
"""

from __future__ import annotations

import torch

from ..errors import KPODInputError


def _where(b: int, r: int, position_offset: int, flat: bool) -> tuple[int, ...]:
    return (r + position_offset,) if flat else (b, r + position_offset)


@torch.library.custom_op("kpod_checks::checked_labels", mutates_args=())
def checked_labels(
    labels: torch.Tensor,
    active: torch.Tensor,
    weights: torch.Tensor | None,
    vocab: int,
    ignore_index: int,
    position_offset: int,
    flat: bool,
) -> torch.Tensor:
    """A copy of ``labels`` ``[B, T]`` once every active label is in ``[0, vocab)`` (and, when
    ``weights`` is given, every active weight is ≥ 0); else a :class:`KPODInputError` naming the
    first bad value and its position (row ``r`` is label position ``r + position_offset``; ``flat``
    reports ``(t,)`` for 2-D input). One device→host synchronisation on CUDA."""
    bad = active & ((labels < 0) | (labels >= vocab))
    flags = [bad.any()]
    if weights is not None:
        negative = active & (weights < 0)
        flags.append(negative.any())
    found = torch.stack(flags).tolist()  # the one synchronisation
    if found[0]:
        b, r = (int(i) for i in bad.nonzero()[0].tolist())
        raise KPODInputError(
            f"labels: expected values in [0, {vocab}) or ignore_index={ignore_index} on active positions, "
            f"got {int(labels[b, r])} at position {_where(b, r, position_offset, flat)}"
        )
    if len(found) > 1 and found[1]:
        b, r = (int(i) for i in negative.nonzero()[0].tolist())
        raise KPODInputError(
            "token_weights: expected non-negative weights on active positions with reduction='weighted_mean', "
            f"got {float(weights[b, r])} at position {_where(b, r, position_offset, flat)}"
        )
    return labels.clone()


@checked_labels.register_fake
def _checked_labels_fake(labels, active, weights, vocab, ignore_index, position_offset, flat):
    return torch.empty_like(labels)
