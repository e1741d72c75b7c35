"""The Hugging Face patch: a Llama-style model trains on the fused linear loss without logits.

Every test that runs the patched model runs on each device of ``loss_helpers.DEVICES`` (fp32 tiny models:
the comparisons are with the unpatched model's own logits in the same dtype)."""

from __future__ import annotations

import copy

import pytest
import torch
from loss_helpers import on_devices

import kpod_ops
from kpod_ops import KPODInputError, keypoint_cross_entropy

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.skipif(not kpod_ops.fused_available("cpu"), reason="needs the compiled extension")

from kpod_ops.integrations.linear_patch import (  # noqa: E402
    is_linear_patched,
    patch_linear_loss,
    supports,
    unpatch_linear_loss,
)

V = 96


def _tiny_llama(seed: int = 0, device: torch.device | str = "cpu", **overrides):
    """A 2-layer Llama (initialised on the CPU, the same weights on every device)."""
    torch.manual_seed(seed)
    cfg = dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True)
    cfg.update(overrides)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg)).to(device)


def _batch(seed: int = 0, B: int = 3, T: int = 12, device: torch.device | str = "cpu"):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (B, T), generator=g)
    labels = ids.clone()
    labels[0, -3:] = -100
    weights = torch.rand(B, T, generator=g) + 0.1
    starts = torch.tensor([2, 5, 0])[:B]
    return tuple(x.to(device) for x in (ids, labels, weights, starts))


@on_devices
def test_patched_loss_and_gradients_match_the_logits_path(device):
    model = _tiny_llama(device=device)
    ref = copy.deepcopy(model)
    patch_linear_loss(model)
    assert is_linear_patched(model)
    ids, labels, weights, starts = _batch(device=device)
    model.train()
    ref.train()
    out = model(input_ids=ids, labels=labels, token_weights=weights, loss_start=starts)
    assert out.logits is None  # no [B, T, V] logits in training
    logits = ref(input_ids=ids).logits
    want = keypoint_cross_entropy(logits, labels, weights, starts, shift=True)
    torch.testing.assert_close(out.loss, want, rtol=1e-5, atol=1e-6)
    out.loss.backward()
    want.backward()
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)
    # plain causal-LM loss (no KPOD fields) equals Hugging Face's own
    model.zero_grad()
    plain = model(input_ids=ids, labels=labels).loss
    torch.testing.assert_close(plain, ref(input_ids=ids, labels=labels).loss, rtol=1e-5, atol=1e-6)
    # eval mode still returns logits; num_items_in_batch replaces the divisor
    model.eval()
    with torch.no_grad():
        ev = model(input_ids=ids, labels=labels, num_items_in_batch=7)
    assert ev.logits is not None and ev.logits.shape == (3, 12, V)
    torch.testing.assert_close(ev.loss, keypoint_cross_entropy(ev.logits, labels, shift=True, reduction="sum") / 7)
    unpatch_linear_loss(model)
    assert not is_linear_patched(model) and "forward" not in model.__dict__


@on_devices
def test_training_curve_matches_unpatched_model(device):
    torch.manual_seed(0)
    model = _tiny_llama(1, device)
    ref = copy.deepcopy(model)
    patch_linear_loss(model)
    curves = []
    for m in (model, ref):
        m.train()
        # SGD, not Adam: Adam turns last-bit gradient differences into visible update differences, which would
        # make the comparison depend on the CPU
        opt = torch.optim.SGD(m.parameters(), lr=0.2)
        losses = []
        for step in range(12):
            ids, labels, weights, starts = _batch(step % 2, device=device)  # two batches in turn: the loss on each falls
            if m is model:
                loss = m(input_ids=ids, labels=labels, token_weights=weights, loss_start=starts).loss
            else:
                loss = keypoint_cross_entropy(m(input_ids=ids).logits, labels, weights, starts, shift=True)
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
        curves.append(losses)
    assert curves[0][-2] < 0.9 * curves[0][0] and curves[0][-1] < 0.9 * curves[0][1]  # it learns
    # float32 losses of models whose parameters went through the same 12 steps: differences of a few EPS per step
    eps = torch.finfo(torch.float32).eps
    torch.testing.assert_close(torch.tensor(curves[0]), torch.tensor(curves[1]), rtol=1024 * eps, atol=0.0)


@on_devices
def test_peft_wrapped_model_is_patched_through_the_wrapper(device):
    peft = pytest.importorskip("peft")
    model = _tiny_llama(2, device)
    ref = copy.deepcopy(model)
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    wrapped = peft.get_peft_model(model, cfg)
    ref_wrapped = peft.get_peft_model(ref, copy.deepcopy(cfg))
    ref_wrapped.load_state_dict(wrapped.state_dict())
    patch_linear_loss(wrapped)
    ids, labels, weights, starts = _batch(3, device=device)
    wrapped.train()
    out = wrapped(input_ids=ids, labels=labels, token_weights=weights, loss_start=starts)
    assert out.logits is None
    want = keypoint_cross_entropy(ref_wrapped(input_ids=ids).logits, labels, weights, starts, shift=True)
    torch.testing.assert_close(out.loss, want, rtol=1e-5, atol=1e-6)
    # a LoRA-adapted LM head is not hidden @ weight.T: refused with the reason
    lm = peft.get_peft_model(_tiny_llama(3), peft.LoraConfig(r=2, target_modules=["lm_head"]))
    ok, why = supports(lm)
    assert not ok and "lm_head" in why
    with pytest.raises(KPODInputError, match="lm_head"):
        patch_linear_loss(lm)


def test_a_head_wrapped_after_the_patch_trains_what_its_forward_computes_or_is_refused():
    """Patch first, wrap with PEFT after: a modules_to_save copy of the head is what the loss uses (its forward
    runs that copy); a LoRA-adapted head is refused (the weight alone would leave the adapter out of the loss)."""
    peft = pytest.importorskip("peft")
    ids, labels, weights, starts = _batch(4)
    model = _tiny_llama(4, tie_word_embeddings=False)
    patch_linear_loss(model)
    saved = peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=["q_proj"], modules_to_save=["lm_head"]))
    with torch.no_grad():
        for name, p in saved.named_parameters():
            if "modules_to_save" in name and "lm_head" in name:
                p.add_(torch.randn_like(p))  # the trainable copy now differs from the original head

    def training_loss_matches_the_logits():
        """The patched training loss against the KPOD loss on the model's own eval logits; returns the loss."""
        saved.train()
        out = saved(input_ids=ids, labels=labels, token_weights=weights, loss_start=starts)
        saved.eval()
        with torch.no_grad():
            logits = saved(input_ids=ids).logits
        torch.testing.assert_close(out.loss, keypoint_cross_entropy(logits, labels, weights, starts, shift=True),
                                   rtol=1e-5, atol=1e-6)
        return out.loss

    training_loss_matches_the_logits().backward()
    copy_grads = [p.grad for n, p in saved.named_parameters() if "modules_to_save" in n and "lm_head" in n]
    assert copy_grads and all(g is not None and bool(g.abs().sum() > 0) for g in copy_grads)
    with saved.disable_adapter():  # the original head again, in the forward and in the loss
        training_loss_matches_the_logits()

    model = _tiny_llama(4, tie_word_embeddings=False)
    patch_linear_loss(model)
    lora = peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=["q_proj", "lm_head"], init_lora_weights=False))
    lora.train()
    with pytest.raises(KPODInputError, match=r"lm_head: .*peft\.tuners\.lora.*fused_linear=False"):
        lora(input_ids=ids, labels=labels, token_weights=weights, loss_start=starts)


def test_unsupported_models_are_refused_with_a_reason():
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=V, n_embd=16, n_layer=1, n_head=2))
    ok, why = supports(gpt2)
    assert not ok and "gpt2" in why
    with pytest.raises(KPODInputError, match="gpt2"):
        patch_linear_loss(gpt2)
    ok, why = supports(_tiny_llama())
    assert ok, why
    # a DeepSpeed ZeRO-3 partitioned head (ds_id) is accepted: the loss runs inside the head's call, where
    # DeepSpeed gathers the weight (python_tests/test_deepspeed.py runs it)
    model = _tiny_llama()
    model.lm_head.weight.ds_id = 7
    ok, why = supports(model)
    assert ok, why
