"""64-bit indexing: a bf16 problem with N·V > 2^31 elements, checked on sampled rows."""

from __future__ import annotations

import pytest
import torch

import kpod_ops
from kpod_ops import keypoint_cross_entropy
from kpod_ops.losses.reference import keypoint_cross_entropy_reference

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not kpod_ops.fused_available("cpu"), reason="kpod_ops._C not built"),
]


def test_more_than_2_pow_31_elements_bf16_forward_and_inplace():
    N, V = 16_400, 131_072
    assert N * V > 2**31
    g = torch.Generator().manual_seed(0)
    logits = torch.empty(N, V, dtype=torch.bfloat16)
    logits.copy_((torch.randn(1, V, generator=g) * 2).to(torch.bfloat16).expand(N, V))  # cheap fill
    rows = torch.tensor([0, 1, 8191, 16_383, 16_384, N - 2, N - 1])  # rows past 2^31 / V = 16384 included
    logits[rows] = (torch.randn(len(rows), V, generator=g) * 3).to(torch.bfloat16)
    labels = torch.randint(0, V, (N,), generator=g)
    sampled = logits[rows].clone()
    with torch.no_grad():
        per = keypoint_cross_entropy(logits, labels, reduction="none", impl="fused")
    want = keypoint_cross_entropy_reference(sampled.double(), labels[rows], reduction="none")
    torch.testing.assert_close(per[rows].double(), want, rtol=1e-4, atol=1e-3)
    # in-place gradient over the whole tensor, then the sampled rows against the reference
    target = labels.view(1, N).contiguous()
    scale = torch.full((1, N), 1.0 / N)
    nll = torch.ops.kpod.kce_forward_backward_inplace(logits.view(1, N, V), target, scale, 0.0)
    torch.testing.assert_close(nll[0, rows].double(), want, rtol=1e-4, atol=1e-3)
    x = sampled.double().requires_grad_(True)
    keypoint_cross_entropy_reference(x, labels[rows], reduction="sum").backward()
    torch.testing.assert_close(logits[rows].double(), x.grad / N, rtol=2.0**-7, atol=1e-9)
