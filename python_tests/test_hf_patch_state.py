"""Issue 19, "one patch, re-entrant": the state of a patched forward belongs to its call and its thread, and
``apply_kpod_loss`` / ``revert_kpod_loss`` change and restore exactly one recorded set of attributes.

1. two threads running forwards of one patched model at the same time each get their own batch's loss;
2. a forward nested in another (through a module hook) computes its batch's loss, and the outer one its own;
3. revert restores every attribute apply changed; a failed apply changes nothing; applying twice is a no-op;
4. a deep copy of a patched model runs its own weights.
"""

from __future__ import annotations

import copy
import threading
import warnings

import pytest
import torch
from test_hf import given, tiny_data, tiny_llama

from kpod_ops import KPODInputError, keypoint_cross_entropy
from kpod_ops.data import KPODCollator
from kpod_ops.integrations import hf
from kpod_ops.integrations.hf import apply_kpod_loss, is_patched, revert_kpod_loss
from kpod_ops.integrations.linear_patch import is_linear_patched

warnings.filterwarnings("ignore", message=".*use_cpu.*")


def two_batches():
    """Two KPOD batches of the same examples and shape with different weights and loss starts, and the tokenizer."""
    tok, tokenized, weights = tiny_data(4)
    first = KPODCollator(tok, weights, given(tokenized, 1))(tokenized[:2])
    cubed = {k: v ** 3 for k, v in weights.items()}
    second = KPODCollator(tok, cubed, given(tokenized, 0))(tokenized[:2])
    assert torch.equal(first["input_ids"], second["input_ids"])
    assert not torch.equal(first["loss_start"], second["loss_start"])
    return tok, first, second


def alone(model, batch) -> float:
    """The KPOD loss of ``batch`` computed by hand from the model's logits."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return float(keypoint_cross_entropy(logits, batch["labels"], batch["token_weights"], batch["loss_start"],
                                        shift=True))


def patched(tok, fused_linear):
    model = apply_kpod_loss(tiny_llama(tok), fused_linear=fused_linear)
    assert model._kpod_patch.linear is fused_linear
    return model.eval()  # no dropout: the losses are compared with the loss computed alone


# ------------------------------------------------------------------------------------------ 1. threads
@pytest.mark.parametrize("fused_linear", [False, True])
def test_two_threads_running_one_patched_model_get_their_own_loss(fused_linear):
    tok, first, second = two_batches()
    model = patched(tok, fused_linear)
    expected = [alone(model, first), alone(model, second)]
    assert expected[0] != pytest.approx(expected[1], rel=1e-3)
    # both forwards wait for each other inside the model, after taking their batch fields and before their loss
    barrier = threading.Barrier(2, timeout=60)

    def wait(module, args):
        barrier.wait()

    handle = model.model.norm.register_forward_pre_hook(wait)
    got, errors = [None, None], []

    def run(i, batch):
        try:
            got[i] = model(**batch).loss.item()
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            barrier.abort()
            errors.append(exc)

    try:
        threads = [threading.Thread(target=run, args=(i, b)) for i, b in enumerate((first, second))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        handle.remove()
    assert not errors, errors  # before: one thread read the other's fields (and the other one's loss: "never called")
    assert got == pytest.approx(expected, rel=1e-5)


# ------------------------------------------------------------------------------------------ 2. nesting
@pytest.mark.parametrize("fused_linear", [False, True])
def test_a_nested_forward_computes_its_own_loss(fused_linear):
    """The model's backbone runs the model on another batch in the middle of its own forward (a hook): between the
    outer forward taking its fields and its loss reading them, the inner forward takes and uses its own."""
    tok, first, second = two_batches()
    model = patched(tok, fused_linear)
    expected = [alone(model, first), alone(model, second)]
    inner, todo = [], [second]

    def nested(module, args):
        if todo:
            inner.append(model(**todo.pop()).loss.item())

    handle = model.model.norm.register_forward_pre_hook(nested)
    try:
        outer = model(**first).loss.item()
    finally:
        handle.remove()
    assert (outer, *inner) == pytest.approx(expected, rel=1e-5)
    assert model._kpod_patch.state.run is None  # every call popped its state


# ------------------------------------------------------------------------------------------ 3. apply / revert
def instance_attributes(model):
    """The instance attributes of the model and of its backbone (what the patch may change), by object."""
    return {name: dict(obj.__dict__) for name, obj in (("model", model), ("backbone", model.model))}


def assert_same(before, after):
    for obj in before:
        assert before[obj].keys() == after[obj].keys(), obj
        for name, value in before[obj].items():
            assert after[obj][name] is value, f"{obj}.{name}"


@pytest.mark.parametrize("fused_linear", [False, True])
@pytest.mark.parametrize("own_forward", [False, True])
def test_revert_restores_every_attribute_apply_changed(fused_linear, own_forward):
    tok, first, _ = two_batches()
    model = tiny_llama(tok).eval()
    if own_forward:  # a forward on the instance (as accelerate's mixed-precision wrapper sets), kept by revert
        model.forward = model.forward
        model.model.forward = model.model.forward
    before = instance_attributes(model)
    apply_kpod_loss(model, fused_linear=fused_linear)
    now = instance_attributes(model)
    changed = {obj: sorted(k for k, v in now[obj].items() if v is not before[obj].get(k, object())) for obj in now}
    # one forward on the model, the linear loss's included (not a second patch under it)
    assert changed == {"model": sorted(["forward", "_loss_function", "accepts_loss_kwargs", "_kpod_patch"]),
                       "backbone": ["forward"]}
    assert not is_linear_patched(model) and model._kpod_patch.linear is fused_linear
    assert {(type(o).__name__, n) for o, n, _, _ in model._kpod_patch.saved} == \
        {("LlamaForCausalLM", n) for n in changed["model"]} | {("LlamaModel", "forward")}
    model(**first).loss.item()
    revert_kpod_loss(model)
    assert_same(before, instance_attributes(model))
    assert not is_patched(model)
    with pytest.raises(KPODInputError, match="patched by apply_kpod_loss"):
        revert_kpod_loss(model)


@pytest.mark.parametrize("fused_linear", [False, True])
def test_a_failed_apply_leaves_the_model_as_it_was(monkeypatch, fused_linear):
    """An error part-way through patching (here: wrapping the backbone, after the model's forward) used to leave a
    model whose forward was patched but that did not count as patched: applying again wrapped the forward twice."""
    tok, first, _ = two_batches()
    model = tiny_llama(tok).eval()
    before = instance_attributes(model)

    def fails(original, *rest):
        raise RuntimeError("no backbone guard")

    monkeypatch.setattr(hf, "_make_backbone_guard", fails)
    with pytest.raises(RuntimeError, match="no backbone guard"):
        apply_kpod_loss(model, fused_linear=fused_linear)
    assert_same(before, instance_attributes(model))
    monkeypatch.undo()
    apply_kpod_loss(model, fused_linear=fused_linear)
    assert model(**first).loss.item() == pytest.approx(alone(model, first), rel=1e-5)
    revert_kpod_loss(model)
    assert_same(before, instance_attributes(model))


def test_applying_twice_is_a_no_op_and_other_options_are_an_error():
    tok, first, _ = two_batches()
    model = patched(tok, True)
    after_one = instance_attributes(model)
    assert apply_kpod_loss(model, fused_linear=True) is model
    assert_same(after_one, instance_attributes(model))  # the same forward: not wrapped twice
    assert model(**first).loss.item() == pytest.approx(alone(model, first), rel=1e-5)
    with pytest.raises(KPODInputError, match="revert_kpod_loss"):
        apply_kpod_loss(model, fused_linear=False)
    revert_kpod_loss(model)
    apply_kpod_loss(model, fused_linear=False)
    assert not model._kpod_patch.linear


# ------------------------------------------------------------------------------------------ 4. copies
@pytest.mark.parametrize("fused_linear", [False, True])
def test_a_deep_copy_of_a_patched_model_runs_its_own_weights(fused_linear):
    """The patched forwards used to call the original model's bound forwards: a copy trained the original's weights."""
    tok, first, _ = two_batches()
    model = patched(tok, fused_linear)
    copied = copy.deepcopy(model)
    with torch.no_grad():
        for p in copied.parameters():
            p.mul_(0.5)
    reference = tiny_llama(tok).eval()  # unpatched, with the copy's weights
    reference.load_state_dict(copied.state_dict())
    expected = alone(reference, first)
    assert expected != pytest.approx(alone(model, first), rel=1e-4)
    assert copied(**first).loss.item() == pytest.approx(expected, rel=1e-5)
    assert model(**first).loss.item() == pytest.approx(alone(model, first), rel=1e-5)
    with torch.no_grad():  # no labels (evaluation, generation): the copy's logits come from the copy's weights
        ids = first["input_ids"]
        assert torch.allclose(copied(input_ids=ids).logits, reference(input_ids=ids).logits, atol=1e-6)
    revert_kpod_loss(copied)
    assert not is_patched(copied) and is_patched(model) and "forward" not in copied.__dict__
