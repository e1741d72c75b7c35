"""KPODCollator / KPODSeq2SeqCollator: labels, loss_start for every c_i, weights (W4), shift equivalence."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from data_helpers import bpe_tokenizer, smollm2_tokenizer
from hypothesis import given, settings
from hypothesis import strategies as st

import kpod_ops
from kpod_ops.data import KPODCollator, KPODSeq2SeqCollator, load_builtin, to_record, tokenize_examples, unguard
from kpod_ops.errors import KPODInputError

EXAMPLES = load_builtin("arith-cot", n=12, seed=7) + load_builtin("gsm8k-fixture")[:4]


def _data(architecture="decoder", tok=None):
    tok = tok or bpe_tokenizer("bytelevel")
    tokenized = tokenize_examples(EXAMPLES, tok, architecture=architecture)
    rng = np.random.default_rng(0)
    weights = {te.id: rng.uniform(0.05, 0.95, te.rationale_len).astype(np.float32) for te in tokenized}
    return tok, tokenized, weights


given_fractions = st.lists(st.floats(0, 1), min_size=16, max_size=16)


@settings(max_examples=40, deadline=None)
@given(given_fractions, st.integers(2, 6), st.sampled_from([None, 8]))
def test_decoder_batch_layout(fractions, batch, multiple):
    tok, tokenized, weights = _data()
    batch_ex = tokenized[:batch]
    given = {te.id: round(f * te.n_steps) for te, f in zip(tokenized, fractions)}
    out = KPODCollator(tok, weights, given, pad_to_multiple_of=multiple)(batch_ex)
    full = KPODCollator(tok, weights, None, pad_to_multiple_of=multiple)(batch_ex)  # c_i = 0
    T = out["input_ids"].shape[1]
    assert T == max(len(te.input_ids) for te in batch_ex) + (-max(len(te.input_ids) for te in batch_ex)) % (multiple or 1)
    assert torch.equal(out["token_weights"], full["token_weights"])  # W4: weights never depend on c_i
    for b, te in enumerate(batch_ex):
        L, p, a, c = len(te.input_ids), te.prompt_len, te.answer_start, given[te.id]
        start = int(out["loss_start"][b])
        assert start == (a if c == te.n_steps else te.step_spans[c][0])  # first token of step c+1
        assert int(full["loss_start"][b]) == p  # c = 0: first rationale token
        assert out["input_ids"][b, :L].tolist() == list(te.input_ids)
        assert (out["input_ids"][b, L:] == tok.pad_token_id).all() and out["attention_mask"][b].tolist() == [1] * L + [0] * (
            T - L
        )
        labels = out["labels"][b]
        assert (labels[:start] == -100).all() and (labels[L:] == -100).all()
        assert labels[start:L].tolist() == list(te.input_ids[start:])  # not shifted
        w = out["token_weights"][b]
        assert torch.equal(w[p:a], torch.from_numpy(weights[te.id])) and (w[a:L] == 1).all()
        assert (w[:p] == 0).all() and (w[L:] == 0).all()
        steps = out["step_ids"][b]
        assert steps[p:a].tolist() == te.step_ids().tolist() and (steps[:p] == -1).all() and (steps[a:] == -1).all()


@pytest.mark.parametrize("reduction", ["none", "sum", "mean", "weighted_mean"])
def test_shift_true_equals_pre_shifted_labels(reduction):
    tok, tokenized, weights = _data()
    given = {te.id: te.n_steps // 2 for te in tokenized}
    batch = KPODCollator(tok, weights, given)(tokenized[:6])
    B, T = batch["input_ids"].shape
    logits = torch.randn(B, T, len(tok), generator=torch.Generator().manual_seed(0), dtype=torch.float64).float()
    ids, w, ls = batch["labels"], batch["token_weights"], batch["loss_start"]
    shifted = kpod_ops.keypoint_cross_entropy(logits, ids, w, ls, shift=True, reduction=reduction)
    manual = kpod_ops.keypoint_cross_entropy(logits[:, :-1], ids[:, 1:], w[:, 1:], ls - 1, shift=False, reduction=reduction)
    if reduction == "none":
        assert (shifted[:, 0] == 0).all()
        shifted = shifted[:, 1:]
    torch.testing.assert_close(shifted, manual)
    if reduction == "sum":  # and both equal plain weighted cross-entropy over the learned tokens
        nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), unguard(ids)[:, 1:].reshape(-1), reduction="none"
        )
        torch.testing.assert_close(shifted, (nll * w[:, 1:].reshape(-1)).sum())


def test_seq2seq_batch_layout():
    tok, tokenized, weights = _data("encoder-decoder")
    given = {te.id: (i % (te.n_steps + 1)) for i, te in enumerate(tokenized)}
    out = KPODSeq2SeqCollator(tok, weights, given, pad_to_multiple_of=4)(tokenized)
    assert out["input_ids"].shape[1] % 4 == 0 and out["labels"].shape[1] % 4 == 0
    assert (out["loss_start"] == 0).all()
    for b, te in enumerate(tokenized):
        start = te.loss_start(given[te.id])
        enc = list(te.input_ids[:start]) + [tok.eos_token_id]
        assert out["input_ids"][b, : len(enc)].tolist() == enc and int(out["attention_mask"][b].sum()) == len(enc)
        target = list(te.input_ids[start:])
        assert out["labels"][b, : len(target)].tolist() == target and (out["labels"][b, len(target) :] == -100).all()
        n_rat = te.answer_start - start
        # W4: the weight of a label token is w at its position within the full rationale.
        assert torch.equal(out["token_weights"][b, :n_rat], torch.from_numpy(weights[te.id][start - te.prompt_len :]))
        assert (out["token_weights"][b, n_rat : len(target)] == 1).all() and (out["token_weights"][b, len(target) :] == 0).all()
        assert out["step_ids"][b, :n_rat].tolist() == te.step_ids()[start - te.prompt_len :].tolist()
        assert (out["step_ids"][b, n_rat:] == -1).all()


def test_dict_features_and_callables():
    tok, tokenized, weights = _data()
    records = [to_record(te) for te in tokenized[:4]]
    for r in records:
        r["token_weights"] = weights[r["id"]].tolist()
    from_dicts = KPODCollator(tok, None, lambda i: 1)(records)
    from_objects = KPODCollator(tok, weights.__getitem__, {te.id: 1 for te in tokenized})(tokenized[:4])
    for key in from_objects:
        assert torch.equal(from_dicts[key], from_objects[key]), key
    loader = torch.utils.data.DataLoader(records, batch_size=2, collate_fn=KPODCollator(tok))
    assert [b["input_ids"].shape[0] for b in loader] == [2, 2]


def test_collator_bad_input():
    tok, tokenized, weights = _data()
    te = tokenized[0]
    cases = [
        (KPODCollator(tok, None, {}), "given_steps: expected an entry for example id"),
        (KPODCollator(tok, None, {te.id: te.n_steps + 1}), rf"given_steps\['{te.id}'\]: expected an int in \[0, {te.n_steps}\]"),
        (KPODCollator(tok, None, {te.id: 1.5}), "given_steps"),
        (KPODCollator(tok, {}, None), "token_weights: expected an entry"),
        (KPODCollator(tok, {te.id: np.ones(te.rationale_len + 1)}), rf"expected shape \({te.rationale_len},\)"),
        (KPODCollator(tok, {te.id: np.full(te.rationale_len, np.nan)}), "expected finite values"),
        (KPODSeq2SeqCollator(tok), "architecture='encoder-decoder'"),
    ]
    for collator, message in cases:
        with pytest.raises(KPODInputError, match=message):
            collator([te])
    with pytest.raises(KPODInputError, match="features: expected a non-empty list"):
        KPODCollator(tok)([])
    with pytest.raises(KPODInputError, match="step_spans"):
        KPODCollator(tok)([{**to_record(te), "step_spans": [[te.prompt_len, te.prompt_len]]}])
    with pytest.raises(KPODInputError, match="pad_token_id"):
        KPODCollator(None)
    with pytest.raises(KPODInputError, match="pad_to_multiple_of"):
        KPODCollator(tok, pad_to_multiple_of=0)
    with pytest.raises(KPODInputError, match="given_steps: expected a dict"):
        KPODCollator(tok, given_steps=[1, 2])


def test_smollm2_collator_lines_up(request):
    tok = smollm2_tokenizer(str(request.config.cache.mkdir("kpod_smollm2_tokenizer")))
    examples = load_builtin("gsm-symbolic", n=8, seed=2)
    tokenized = tokenize_examples(examples, tok)
    given = {te.id: te.n_steps - 1 for te in tokenized}
    out = KPODCollator(tok, None, given)(tokenized)
    for b, (ex, te) in enumerate(zip(examples, tokenized)):
        labels = unguard(out["labels"])[b]
        learned = labels[labels != -100].tolist()
        # What is learned is exactly the last step, the answer sentence and EOS.
        assert tok.decode(learned) == te.steps[-1] + f"\nTherefore, the answer is {ex.answer}." + tok.eos_token
        assert tok.decode(out["input_ids"][b, : out["loss_start"][b]]).endswith("".join(te.steps[:-1]))


def test_left_padding_is_respected_and_gives_the_same_loss():
    from kpod_ops.models import tiny_student, tiny_tokenizer

    tok = tiny_tokenizer()
    tokenized = tokenize_examples(load_builtin("arith-cot", n=4, seed=3), tok)
    given = {te.id: te.n_steps // 2 for te in tokenized}
    right = KPODCollator(tok, None, given, padding_side="right")(tokenized)
    tok.padding_side = "left"
    left = KPODCollator(tok, None, given)(tokenized)  # follows the tokenizer
    T = left["input_ids"].shape[1]
    for b, te in enumerate(tokenized):
        L = len(te.input_ids)
        o = T - L
        for key in ("input_ids", "attention_mask", "labels", "token_weights", "step_ids"):
            assert torch.equal(unguard(left[key])[b, o:], unguard(right[key])[b, :L]), key
        assert (left["attention_mask"][b, :o] == 0).all() and (unguard(left["labels"])[b, :o] == -100).all()
        assert int(left["loss_start"][b]) == o + int(right["loss_start"][b])
        assert left["position_ids"][b, o:].tolist() == list(range(L))
    assert "position_ids" not in right
    model = tiny_student(tok, hidden_size=32, num_layers=2, num_heads=2).eval()
    losses = []
    for batch in (right, left):
        extra = {"position_ids": batch["position_ids"]} if "position_ids" in batch else {}
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **extra).logits
        losses.append(kpod_ops.keypoint_cross_entropy(logits, unguard(batch["labels"]), batch["token_weights"],
                                                      batch["loss_start"], reduction="sum", shift=True))
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-4, atol=1e-4)
    with pytest.raises(KPODInputError, match="padding_side: expected 'right', 'left'"):
        KPODCollator(tok, padding_side="center")


def test_collator_refuses_tensors_strings_and_bad_label_pad():
    tok, tokenized, weights = _data()
    te = tokenized[0]
    with pytest.raises(KPODInputError, match=rf"given_steps\['{te.id}'\]: expected an int .* got a Tensor of shape \(2,\)"):
        KPODCollator(tok, None, {te.id: torch.tensor([1, 2])})([te])
    with pytest.raises(KPODInputError, match="given_steps"):
        KPODCollator(tok, None, {te.id: torch.tensor(1.0)})([te])
    assert int(KPODCollator(tok, None, {te.id: torch.tensor(1)})([te])["loss_start"][0]) == te.step_spans[1][0]
    assert int(KPODCollator(tok, None, {te.id: np.int32(1)})([te])["loss_start"][0]) == te.step_spans[1][0]
    with pytest.raises(KPODInputError, match=rf"token_weights\['{te.id}'\]: expected numbers .* got dtype <U"):
        KPODCollator(tok, {te.id: ["0.5"] * te.rationale_len})([te])
    with pytest.raises(KPODInputError, match="token_weights"):
        KPODCollator(tok, {te.id: "0.5"})([te])
    for bad in (0, 5, "x", None, True, -1.5):
        with pytest.raises(KPODInputError, match="label_pad_token_id: expected a negative int"):
            KPODCollator(tok, label_pad_token_id=bad)
    assert (unguard(KPODCollator(tok, label_pad_token_id=-1)([te])["labels"])[0, : te.prompt_len] == -1).all()
