"""The fused linear patch on every family it knows (Gemma 2/3 soft-capping, Granite scaling, MoE router
loss included): the patched model's loss and every parameter's gradient equal the unpatched model's own
logits pushed through the KPOD reference loss; unknown families and transforms are refused by name.

Every test that runs the fused linear loss runs on each device of ``loss_helpers.DEVICES`` (fp32 tiny models,
and the soft-cap in fp64 against the reference); the refusals, which never reach a kernel, on the CPU."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from loss_helpers import on_devices

import kpod_ops
from kpod_ops import KPODInputError, keypoint_cross_entropy
from kpod_ops.losses import linear_ops
from kpod_ops.losses.linear import keypoint_linear_cross_entropy
from kpod_ops.losses.linear_reference import keypoint_linear_cross_entropy_reference

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.skipif(not kpod_ops.fused_available("cpu"), reason="needs the compiled extension")

from kpod_ops.integrations.hf import apply_kpod_loss, revert_kpod_loss  # noqa: E402
from kpod_ops.integrations.linear_patch import (  # noqa: E402
    FAMILIES,
    hidden_and_head,
    patch_linear_loss,
    supports,
    supports_plain_head,
)

V = 96
EPS = torch.finfo(torch.float32).eps
# Both sides compute the same float32 quantities in another order (chunked LM-head GEMMs, the fused
# softmax, the weight gradient accumulated over chunks, the soft-cap / scale applied elsewhere): each
# result carries a few roundings of relative size EPS, grown at most by sqrt(#terms) ≤ sqrt(V·H) ≈ 55
# in the longest sums. 64·EPS (7.6e-6) bounds that with room, and is still three orders of magnitude
# below what each family's transform moves (asserted below, so a dropped transform fails).
RTOL = 64 * EPS

COMMON = dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2)

# family -> (config class, model class, config overrides): one per model type in FAMILIES
CASES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 8}),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {}),
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", {}),
    "smollm3": ("SmolLM3Config", "SmolLM3ForCausalLM", {}),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", {"head_dim": 8, "final_logit_softcapping": 3.0}),
    "gemma3_text": ("Gemma3TextConfig", "Gemma3ForCausalLM", {"head_dim": 8, "final_logit_softcapping": 3.0}),
    "granite": ("GraniteConfig", "GraniteForCausalLM", {"logits_scaling": 4.0}),
    "mixtral": ("MixtralConfig", "MixtralForCausalLM",
                {"num_local_experts": 4, "num_experts_per_tok": 2, "output_router_logits": True,
                 "router_aux_loss_coef": 0.5}),
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM",
                  {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32, "head_dim": 8,
                   "output_router_logits": True, "router_aux_loss_coef": 0.5}),
}


def test_every_family_has_a_case():
    assert set(CASES) == set(FAMILIES)


def _model(family: str, seed: int = 0, device: torch.device | str = "cpu", **overrides):
    """A tiny fp32 model of ``family`` (initialised on the CPU: the same weights on every device)."""
    config_cls, model_cls, extra = CASES[family]
    torch.manual_seed(seed)
    config = getattr(transformers, config_cls)(**{**COMMON, **extra, **overrides})
    assert config.model_type == family
    model = getattr(transformers, model_cls)(config).float()
    with torch.no_grad():  # logits of a few units: the soft-cap (cap 3) and the scale (÷4) change them a lot
        model.lm_head.weight.normal_(0.0, 1.0)
    return model.to(device)


def _batch(seed: int = 0, B: int = 3, T: int = 12, device: torch.device | str = "cpu"):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, V, (B, T), generator=g)
    labels = ids.clone()
    labels[0, -3:] = -100
    labels[1, :5] = -100  # before loss_start, as KPODCollator masks them
    weights = torch.rand(B, T, generator=g) + 0.1
    weights[2, 7] = 0.0
    starts = torch.tensor([2, 5, 0])[:B]
    mask = torch.ones_like(ids)
    mask[2, :2] = 0  # left padding
    return tuple(x.to(device) for x in (ids, mask, labels, weights, starts))


def _want(ref, ids, mask, labels, weights, starts):
    """The unpatched model's own logits through the KPOD reference loss (+ its own router loss); also the loss
    of the bare LM-head output (no soft-cap / scale) to show that the family's transform matters."""
    out = ref(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    loss = keypoint_cross_entropy(out.logits, labels, weights, starts, shift=True, impl="reference")
    raw = ref.lm_head(out.hidden_states[-1]).detach()
    raw_loss = keypoint_cross_entropy(raw, labels, weights, starts, shift=True, impl="reference")
    if getattr(out, "aux_loss", None) is not None:
        loss = loss + ref.router_aux_loss_coef * out.aux_loss
    return loss, raw_loss, out


def _assert_grads_close(model, ref):
    for (name, p), (_, q) in zip(model.named_parameters(), ref.named_parameters(), strict=True):
        if q.grad is None:
            assert p.grad is None, name
            continue
        assert p.grad is not None, name
        off, size = float((p.grad - q.grad).norm()), float(q.grad.norm())
        assert off <= RTOL * size + 1e-30, f"{name}: gradients differ by {off:.3g} (norm {size:.3g})"


@on_devices
@pytest.mark.parametrize("via", ["patch_linear_loss", "apply_kpod_loss"])
@pytest.mark.parametrize("family", list(CASES))
def test_loss_and_gradients_match_the_models_own_logits(family, via, device):
    model = _model(family, device=device)
    ref = copy.deepcopy(model)
    ok, why = supports(model)
    assert ok, why
    if via == "patch_linear_loss":
        patch_linear_loss(model)
    else:
        apply_kpod_loss(model, fused_linear=True)
    ids, mask, labels, weights, starts = _batch(device=device)
    model.train()
    ref.train()
    out = model(input_ids=ids, attention_mask=mask, labels=labels, token_weights=weights, loss_start=starts)
    assert out.logits is None  # no [B, T, V] logits in training
    want, raw_loss, ref_out = _want(ref, ids, mask, labels, weights, starts)
    torch.testing.assert_close(out.loss, want, rtol=RTOL, atol=0.0)
    spec, value = FAMILIES[family], want.item()
    if spec.softcap or spec.divide_by:  # the transform moves the loss far beyond the tolerance
        assert abs(raw_loss.item() - value) > 1e3 * RTOL * value
    if spec.router_aux:  # the router loss is there, the model's own value
        assert out.aux_loss is not None
        torch.testing.assert_close(out.aux_loss, ref_out.aux_loss, rtol=RTOL, atol=0.0)
        assert ref.router_aux_loss_coef * ref_out.aux_loss.item() > 1e3 * RTOL * value
    out.loss.backward()
    want.backward()
    _assert_grads_close(model, ref)


@on_devices
@pytest.mark.parametrize("family", ["gemma2", "granite", "mixtral", "phi3"])
def test_plain_batches_and_eval_match_the_models_own_forward(family, device):
    """Without KPOD fields the patched loss is the model's own loss (router loss included); in eval mode the
    logits are the model's own (soft-capped / scaled)."""
    model = _model(family, seed=1, device=device)
    ref = copy.deepcopy(model)
    patch_linear_loss(model)
    ids, mask, labels, _, _ = _batch(1, device=device)
    model.train()
    ref.train()
    got = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    torch.testing.assert_close(got, ref(input_ids=ids, attention_mask=mask, labels=labels).loss, rtol=RTOL, atol=0.0)
    model.eval()
    ref.eval()
    with torch.no_grad():
        ev = model(input_ids=ids, attention_mask=mask, labels=labels)
        want = ref(input_ids=ids, attention_mask=mask, labels=labels)
    torch.testing.assert_close(ev.logits, want.logits, rtol=RTOL, atol=RTOL)
    torch.testing.assert_close(ev.loss, want.loss, rtol=RTOL, atol=0.0)


@on_devices
@pytest.mark.parametrize("family", ["mixtral", "qwen3_moe"])
def test_router_loss_follows_output_router_logits(family, device):
    """The router loss is added exactly when the model's own forward adds it: the argument, else the config."""
    model = _model(family, seed=2, device=device, output_router_logits=False)
    ref = copy.deepcopy(model)
    apply_kpod_loss(model, fused_linear=True)
    ids, mask, labels, weights, starts = _batch(2, device=device)
    kpod = dict(labels=labels, token_weights=weights, loss_start=starts)
    base = keypoint_cross_entropy(ref(input_ids=ids, attention_mask=mask).logits, labels, weights, starts, shift=True,
                                  impl="reference")
    off = model(input_ids=ids, attention_mask=mask, **kpod)
    assert off.aux_loss is None
    torch.testing.assert_close(off.loss, base, rtol=RTOL, atol=0.0)
    on = model(input_ids=ids, attention_mask=mask, output_router_logits=True, **kpod)
    aux = ref(input_ids=ids, attention_mask=mask, output_router_logits=True).aux_loss
    torch.testing.assert_close(on.aux_loss, aux, rtol=RTOL, atol=0.0)
    torch.testing.assert_close(on.loss, base + ref.router_aux_loss_coef * aux, rtol=RTOL, atol=0.0)
    # evaluation without gradients: the returned loss is still the KPOD loss (plus the router loss)
    model.eval()
    with torch.no_grad():
        ev = model(input_ids=ids, attention_mask=mask, output_router_logits=True, **kpod)
    torch.testing.assert_close(ev.loss, on.loss.detach(), rtol=RTOL, atol=0.0)
    revert_kpod_loss(model)


def test_unsupported_family_is_refused_by_name():
    config = transformers.OlmoeConfig(**{**COMMON, "num_experts": 4, "num_experts_per_tok": 2})
    model = transformers.OlmoeForCausalLM(config)
    ok, why = supports(model)
    assert not ok and "'olmoe'" in why
    with pytest.raises(KPODInputError, match="olmoe"):
        patch_linear_loss(model)
    with pytest.raises(KPODInputError, match="olmoe"):
        apply_kpod_loss(model, fused_linear=True)
    with pytest.warns(UserWarning, match="olmoe.*computed from the logits"):
        apply_kpod_loss(model, fused_linear="auto")
    revert_kpod_loss(model)


def test_transforms_the_family_does_not_have_are_refused():
    llama = _model("llama", logit_scale=2.0)  # a config attribute Llama's forward ignores ... and so would the patch
    ok, why = supports(llama)
    assert not ok and "logit_scale" in why
    ok, why = supports(_model("gemma2", final_logit_softcapping=0.0))
    assert not ok and "final_logit_softcapping" in why and "> 0" in why
    # a soft-capping model needs a loss function that takes the cap
    with pytest.raises(KPODInputError, match="logit_softcap"):
        patch_linear_loss(_model("gemma2"), loss_fn=lambda hidden, weight, labels, *, bias=None, token_weights=None,
                          loss_start=None, num_items_in_batch=None, ignore_index=-100: hidden.sum())


def test_plain_head_support_for_losses_from_the_head_alone():
    """``hidden_and_head`` (kpod distill, the answer predictor) uses the LM head alone: families that transform their
    logits are refused there with the reason, the others (MoE included) accepted."""
    for family, plain in (("gemma2", False), ("granite", False), ("mixtral", True), ("phi3", True)):
        ok, why = supports_plain_head(_model(family))
        assert ok is plain, why
    ok, why = supports_plain_head(_model("gemma3_text", final_logit_softcapping=None))
    assert ok, why
    with pytest.raises(KPODInputError, match="logits_scaling"):
        hidden_and_head(_model("granite"), torch.zeros(1, 4, dtype=torch.long))


# ------------------------------------------------------------------ the soft-cap inside the fused linear loss
@on_devices
@settings(max_examples=15)
@given(
    n_chunks=st.integers(1, 4), cap=st.sampled_from([0.5, 3.0, 30.0]), reduction=st.sampled_from(["mean", "sum", "none"]),
    with_weights=st.booleans(), weights_grad=st.booleans(), bias=st.booleans(), smoothing=st.sampled_from([0.0, 0.1]),
    seed=st.integers(0, 2**16),
)
def test_softcap_matches_the_reference(device, n_chunks, cap, reduction, with_weights, weights_grad, bias, smoothing,
                                       seed):
    """Loss and gradients (hidden, weight, bias, token weights) of ``logit_softcap`` equal the reference, which
    soft-caps the full logits and lets autograd differentiate tanh (float64: the comparison is exact to 1e-10)."""
    g = torch.Generator().manual_seed(seed)
    B, T, H, Vs = 2, 7, 8, 33
    hidden = torch.randn(B, T, H, generator=g, dtype=torch.float64) * 2
    weight = torch.randn(Vs, H, generator=g, dtype=torch.float64)
    b = torch.randn(Vs, generator=g, dtype=torch.float64) if bias else None
    labels = torch.randint(0, Vs, (B, T), generator=g)
    labels[0, -2:] = -100
    weights = torch.rand(B, T, generator=g, dtype=torch.float64) if with_weights else None
    if weights is not None:
        weights[1, 3] = 0.0
    starts = torch.tensor([1, 3])
    hidden, weight, b, labels, weights, starts = (None if t is None else t.to(device)
                                                  for t in (hidden, weight, b, labels, weights, starts))
    results = []
    for fn in (keypoint_linear_cross_entropy, keypoint_linear_cross_entropy_reference):
        args = [t.clone().requires_grad_() if t is not None else None for t in (hidden, weight, b)]
        w = weights.clone().requires_grad_() if weights is not None and weights_grad else weights
        kw = dict(reduction=reduction, shift=True, label_smoothing=smoothing, logit_softcap=cap)
        if fn is keypoint_linear_cross_entropy:
            kw.update(chunk_size=max(1, (B * T) // n_chunks), impl="fused")
        loss = fn(args[0], args[1], labels, w, starts, args[2], **kw)
        scale = torch.arange(1.0, loss.numel() + 1, dtype=loss.dtype, device=device).reshape(loss.shape)
        (loss * scale).sum().backward()
        results.append([loss.detach()] + [t.grad for t in (*args, w) if isinstance(t, torch.Tensor) and t.requires_grad])
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@on_devices
def test_softcap_ops_pass_opcheck_and_refuse_bad_caps(device):
    g = torch.Generator().manual_seed(0)
    h, W, b = (torch.randn(*s, generator=g).to(device) for s in ((6, 4), (11, 4), (11,)))
    target = torch.randint(0, 11, (6,), generator=g).to(device)
    use = torch.tensor([True, True, False, True, True, True], device=device)
    scale = torch.rand(6, generator=g).to(device)
    grads = [t.clone().requires_grad_() for t in (h, W, b)]
    torch.library.opcheck(linear_ops.nll, (*grads, target, use, 0.0, 4, [], 2.0))
    torch.library.opcheck(linear_ops.forward_backward, (h, W, b, target, use, scale, 0.0, 4, [], [True, True, True], 2.0))
    torch.library.opcheck(linear_ops.backward, (h, W, b, target, use, scale, 0.0, 4, [True, True, True], 2.0))
    labels = torch.randint(0, 11, (6,), generator=g).to(device)
    for bad in (0, -1.0, float("inf"), float("nan"), True, "3"):
        with pytest.raises(KPODInputError, match="logit_softcap"):
            keypoint_linear_cross_entropy(h, W, labels, logit_softcap=bad)
    h = h * 3
    capped = keypoint_linear_cross_entropy(h, W, labels, logit_softcap=0.5, impl="fused")
    torch.testing.assert_close(capped, keypoint_linear_cross_entropy_reference(h, W, labels, logit_softcap=0.5))
    assert abs(float(capped) - float(keypoint_linear_cross_entropy(h, W, labels, impl="fused"))) > 0.1
