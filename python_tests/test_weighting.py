"""Unit tests of the mask learner (kpod_ops.weighting): invariants W1-W7 of docs/method.md and the API."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import LlamaConfig, LlamaForCausalLM, T5Config, T5ForConditionalGeneration

from kpod_ops.data.tokenized import TokenizedExample
from kpod_ops.errors import KPODInputError
from kpod_ops.weighting import (
    DegenerateWeightsWarning,
    MaskLearner,
    MaskLearnerConfig,
    TokenWeighter,
    apply_mask,
    degeneracy,
    is_degenerate,
    load_token_weights,
    render_html,
    render_png,
    renormalize_mean_one,
    save_token_weights,
    tokenizer_fingerprint,
    weight_stats,
)
from kpod_ops.weighting.batching import make_batch
from kpod_ops.weighting.gumbel import gumbel_sigmoid
from kpod_ops.weighting.planted import WordTokenizer, planted_task
from kpod_ops.weighting.prefixes import sample_prefix_lengths
from kpod_ops.weighting.training import evaluate

VOCAB = 128


def tiny_llama(vocab: int = VOCAB, hidden: int = 32, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
    )  # fmt: skip
    return LlamaForCausalLM(cfg)


def tiny_t5(vocab: int = VOCAB, d_model: int = 32, seed: int = 0) -> T5ForConditionalGeneration:
    torch.manual_seed(seed)
    cfg = T5Config(
        vocab_size=vocab, d_model=d_model, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=1, num_heads=4,
        dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
    )  # fmt: skip
    return T5ForConditionalGeneration(cfg)


def make_example(i: int, prompt, steps, answer) -> TokenizedExample:
    """A TokenizedExample from id lists: prompt, steps (list of id lists), answer."""
    ids, spans = list(prompt), []
    for s in steps:
        spans.append((len(ids), len(ids) + len(s)))
        ids += list(s)
    return TokenizedExample(
        id=f"ex{i}", input_ids=tuple(ids) + tuple(answer), prompt_len=len(prompt), step_spans=tuple(spans), answer_start=len(ids)
    )


def random_examples(n: int, seed: int = 0, vocab: int = VOCAB) -> list[TokenizedExample]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        prompt = rng.integers(2, vocab, rng.integers(1, 5)).tolist()
        steps = [rng.integers(2, vocab, rng.integers(1, 6)).tolist() for _ in range(rng.integers(1, 4))]
        answer = rng.integers(2, vocab, rng.integers(1, 3)).tolist() + [1]
        out.append(make_example(i, prompt, steps, answer))
    return out


@pytest.fixture(scope="module")
def llama_learner() -> MaskLearner:
    model = tiny_llama()
    return MaskLearner(model, model, MaskLearnerConfig.literal(num_prefixes=3, seed=0))


# --- W1: weights strictly in (0, 1), finite, zero at padding ---------------------------------


def test_w1_weights_in_open_unit_interval_and_zero_at_padding(llama_learner):
    exs = random_examples(6)
    b = make_batch(exs)
    w = llama_learner.weighter.weights(b.rationale, b.attention_mask)
    valid = w[b.attention_mask]
    assert torch.isfinite(w).all() and (valid > 0).all() and (valid < 1).all()
    assert (w[~b.attention_mask] == 0).all()
    weights = llama_learner.token_weights(exs)
    for ex in exs:
        arr = weights[ex.id]
        assert arr.dtype == np.float32 and arr.shape == (ex.rationale_len,)
        assert np.all((arr > 0) & (arr < 1))


# --- W2/W3 belong to Eq. 8 (curriculum); here: the weights they consume are per rationale token --


# --- W4: weights depend only on the example, not on the batch or a truncation point ---------


@settings(max_examples=10, deadline=None)
@given(st.permutations(list(range(6))), st.integers(1, 6))
def test_w4_weights_invariant_to_batch_composition_and_order(llama_learner, perm, batch_size):
    exs = random_examples(6, seed=3)
    alone = {ex.id: llama_learner.token_weights([ex])[ex.id] for ex in exs}
    together = llama_learner.token_weights([exs[i] for i in perm], batch_size=batch_size)
    for ex in exs:
        np.testing.assert_allclose(together[ex.id], alone[ex.id], rtol=0, atol=1e-6)


def test_w4_weights_do_not_depend_on_the_prompt(llama_learner):
    ex = random_examples(1, seed=5)[0]
    other = make_example(0, [7, 8, 9, 10, 11], [list(ex.rationale_ids)], list(ex.answer_ids))
    a, b = llama_learner.token_weights([ex])["ex0"], llama_learner.token_weights([other])["ex0"]
    np.testing.assert_array_equal(a, b)


# --- W5: Gumbel mask ---------------------------------------------------------------------------


def test_w5_soft_mask_in_unit_interval_and_hard_keep_rate_matches_w():
    logits = torch.tensor([-2.0, -0.5, 0.0, 0.7, 2.5])
    gen = torch.Generator().manual_seed(0)
    soft = gumbel_sigmoid(logits.expand(4000, 5), 1.0, generator=gen)
    assert (soft >= 0).all() and (soft <= 1).all()
    hard = gumbel_sigmoid(logits.expand(20000, 5), 0.7, hard=True, generator=gen)
    assert set(hard.unique().tolist()) <= {0.0, 1.0}
    rate, w = hard.mean(0), torch.sigmoid(logits)
    assert torch.all((rate - w).abs() < 4 * torch.sqrt(w * (1 - w) / 20000) + 1e-3)


def test_w5_low_temperature_samples_approach_binary():
    logits = torch.randn(5000, generator=torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(2)
    far = lambda m: torch.minimum(m, 1 - m).mean().item()  # noqa: E731
    assert far(gumbel_sigmoid(logits, 0.01, generator=gen)) < 0.01 < far(gumbel_sigmoid(logits, 1.0, generator=gen))


def test_w5_hard_samples_pass_the_soft_gradient():
    logits = torch.zeros(10, requires_grad=True)
    gumbel_sigmoid(logits, 1.0, hard=True, generator=torch.Generator().manual_seed(0)).sum().backward()
    assert (logits.grad > 0).all()


def test_mask_acts_on_embeddings_and_keeps_gradient():
    e = torch.randn(2, 3, 4)
    e_mask = torch.randn(4)
    m = torch.tensor([[1.0, 0.0, 0.5], [0.0, 1.0, 1.0]], requires_grad=True)
    out = apply_mask(e, m, e_mask)
    torch.testing.assert_close(out[0, 0], e[0, 0])
    torch.testing.assert_close(out[0, 1], e_mask)
    torch.testing.assert_close(out[0, 2], 0.5 * e[0, 2] + 0.5 * e_mask)
    out.sum().backward()
    torch.testing.assert_close(m.grad, (e - e_mask).sum(-1))


# --- W6: L_m = sum of m over non-pad tokens; L_p uses only the prefix ---------------------------


def test_w6_mask_loss_is_sum_of_sampled_mask_over_real_tokens(llama_learner):
    exs = random_examples(5, seed=7)
    b = make_batch(exs)
    seed = 11
    out = llama_learner.objective(b, rng=np.random.default_rng(0), generator=torch.Generator().manual_seed(seed))
    logits, _ = llama_learner.weighter(b.rationale, b.attention_mask)
    m = gumbel_sigmoid(logits, 1.0, generator=torch.Generator().manual_seed(seed))
    expected = torch.where(b.attention_mask, m, torch.zeros_like(m)).sum(-1).mean()
    assert out["mask_loss"].item() >= 0
    torch.testing.assert_close(out["mask_loss"], expected)
    assert torch.isfinite(out["answer_loss"]) and out["answer_loss"] > 0


@pytest.mark.parametrize("make", [tiny_llama, tiny_t5])
def test_w6_prefix_term_ignores_tokens_at_or_after_k(make):
    model = make()
    learner = MaskLearner(model, model, MaskLearnerConfig(predictor_training="frozen"))
    learner.eval()
    ex = random_examples(1, seed=9)[0]
    b = make_batch([ex])
    emb = learner.weighter.embed
    rat = emb(b.rationale[0])
    changed = rat.clone()
    k = max(1, ex.rationale_len // 2)
    changed[k:] = torch.randn_like(changed[k:])
    args = lambda r: ([emb(b.prompts[0])], [r], [emb(b.answers[0])], b.answers, [(0, k), (0, ex.rationale_len)])  # noqa: E731
    with torch.no_grad():
        a, c = learner.predictor(*args(rat)), learner.predictor(*args(changed))
    torch.testing.assert_close(a[0], c[0], rtol=1e-5, atol=1e-5)
    if ex.rationale_len > k:
        assert not torch.allclose(a[1], c[1])


def test_prefix_rows_are_batched_exactly_like_single_calls(llama_learner):
    """The batched (left-padded) P-prefix forward equals one call per prefix."""
    llama_learner.eval()
    exs = random_examples(3, seed=13)
    emb = llama_learner.weighter.embed
    p = [emb(torch.tensor(ex.prompt_ids)) for ex in exs]
    r = [emb(torch.tensor(ex.rationale_ids)) for ex in exs]
    a_ids = [torch.tensor(ex.answer_ids) for ex in exs]
    a = [emb(x) for x in a_ids]
    rows = [(i, k) for i, ex in enumerate(exs) for k in range(1, ex.rationale_len + 1)]
    with torch.no_grad():
        batched = llama_learner.predictor(p, r, a, a_ids, rows)
        single = torch.stack([llama_learner.predictor(p, r, a, a_ids, [row])[0] for row in rows])
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("training, vocab", [("full", VOCAB), ("lora", VOCAB), ("full", 64)])
def test_shared_prefix_forward_equals_one_row_per_prefix(training, vocab):
    """One sequence per example with a 4-D mask gives the per-(example, prefix) rows' NLLs and gradients."""
    student, predictor = tiny_llama(), tiny_llama(vocab=vocab, hidden=48, seed=2)
    learner = MaskLearner(student, predictor, MaskLearnerConfig(predictor_training=training, lora_r=4))
    learner.eval()
    exs = random_examples(5, seed=17)
    emb = learner.weighter.embed
    p = [emb(torch.tensor(ex.prompt_ids)) for ex in exs]
    a_ids = [torch.tensor(ex.answer_ids) for ex in exs]
    a = [emb(x) for x in a_ids]
    rows = [(i, k) for i, ex in enumerate(exs) for k in sorted({1, ex.rationale_len, max(1, ex.rationale_len // 2)})]
    rows = [rows[j] for j in np.random.default_rng(0).permutation(len(rows))]  # any order
    results = []
    for share in (True, False):
        r = [emb(torch.tensor(ex.rationale_ids)).requires_grad_(True) for ex in exs]
        learner.predictor.share_prefixes = share
        nll = learner.predictor(p, r, a, a_ids, rows)
        nll.sum().backward()
        results.append((nll.detach(), [x.grad for x in r]))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-4, atol=1e-4)
    for g_shared, g_rows in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(g_shared, g_rows, rtol=1e-3, atol=1e-5)


# --- W7: the answer loss alone trains the weight generator --------------------------------------


@pytest.mark.parametrize("training", ["full", "frozen", "lora"])
@pytest.mark.parametrize("make", [tiny_llama, tiny_t5])
def test_w7_answer_loss_alone_gives_weight_generator_gradient(make, training):
    model = make()
    learner = MaskLearner(model, model, MaskLearnerConfig(alpha=0.0, predictor_training=training))
    out = learner.objective(
        make_batch(random_examples(4, seed=1)), rng=np.random.default_rng(0), generator=torch.Generator().manual_seed(0)
    )
    out["loss"].backward()
    for p in list(learner.weighter.mlp.parameters()) + list(learner.weighter.attention.parameters()):
        assert p.grad is not None and torch.isfinite(p.grad).all()
    assert any(p.grad.abs().sum() > 0 for p in learner.weighter.mlp.parameters())
    assert learner.weighter.embedding.weight.grad is None  # the student embedding stays frozen


# --- prefixes ------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 200), st.integers(1, 12), st.integers(0, 2**31 - 1))
def test_prefix_sampling_covers_full_and_short_prefixes(length, p, seed):
    ks, coef = sample_prefix_lengths(length, p, np.random.default_rng(seed))
    assert ks.min() >= 1 and ks.max() == length and np.all(np.diff(ks) > 0)
    assert math.isclose(coef.sum(), length)
    if p > 1 and length > p:
        assert len(ks) == p and ks[0] <= 1 + (length - 1) / (p - 1)  # a short prefix from the first stratum


def test_prefix_estimator_is_unbiased_for_the_sum_over_all_prefixes():
    f = np.sin(np.arange(1, 31)) + 2.0  # any per-prefix loss
    rng = np.random.default_rng(0)
    est = []
    for _ in range(4000):
        ks, coef = sample_prefix_lengths(30, 4, rng)
        est.append(float((coef * f[ks - 1]).sum()))
    assert abs(np.mean(est) - f.sum()) < 0.01 * f.sum()


# --- answer predictor variants ------------------------------------------------------------------


@pytest.mark.parametrize("make", [tiny_llama, tiny_t5])
def test_projection_and_answer_head_for_mismatched_predictor(make):
    student = tiny_llama(vocab=VOCAB, hidden=48)
    predictor = make(vocab=64)  # different width and vocabulary
    learner = MaskLearner(student, predictor, MaskLearnerConfig(predictor_training="lora", lora_r=4))
    assert isinstance(learner.predictor.projection, torch.nn.Linear) and learner.predictor.answer_head is not None
    out = learner.objective(make_batch(random_examples(3)), rng=np.random.default_rng(0))
    out["loss"].backward()
    assert learner.predictor.projection.weight.grad.abs().sum() > 0
    assert learner.weighter.mlp[0].weight.grad.abs().sum() > 0


def test_mask_loss_options(llama_learner):
    b = make_batch(random_examples(4, seed=2))
    cfg = llama_learner.config
    try:
        cfg.mask_loss, cfg.mask_norm = "expected", "length"
        out = llama_learner.objective(b, rng=np.random.default_rng(0))
        w = llama_learner.weighter.weights(b.rationale, b.attention_mask)
        expected = (w.sum(-1) / torch.tensor(b.lengths)).mean()
        torch.testing.assert_close(out["mask_loss"], expected)
    finally:
        cfg.mask_loss, cfg.mask_norm = "sampled", "sum"


# --- fit ------------------------------------------------------------------------------------------


def _fit(tmp_path=None, **kw):
    model = tiny_llama(seed=1)
    cfg = MaskLearnerConfig(epochs=2, batch_size=4, seed=3, num_prefixes=2, **kw)
    learner = MaskLearner(model, model, cfg)
    hist = learner.fit(random_examples(10, seed=4), random_examples(4, seed=5), progress=False, checkpoint_dir=tmp_path)
    return learner, hist


def test_fit_is_deterministic_and_checkpoints(tmp_path):
    a, hist_a = _fit(tmp_path / "a", tau_final=0.5)
    b, hist_b = _fit(tmp_path / "b", tau_final=0.5)
    assert hist_a == hist_b and len(hist_a) == 2
    assert {"val_answer_loss", "val_kept", "val_kept_hard", "train_loss"} <= set(hist_a[0])
    assert hist_a[-1]["tau"] == pytest.approx(0.5)
    exs = random_examples(4, seed=5)
    wa, wb = a.token_weights(exs), b.token_weights(exs)
    for k in wa:
        np.testing.assert_array_equal(wa[k], wb[k])
    assert (tmp_path / "a" / "best.pt").exists() and (tmp_path / "a" / "epoch2.pt").exists()
    fresh = MaskLearner(tiny_llama(seed=1), tiny_llama(seed=1), a.config)  # reload the best checkpoint
    fresh.predictor.model = a.predictor.model
    fresh.load_trainable_state(tmp_path / "a" / "best.pt")
    wf = fresh.token_weights(exs)
    for k in wa:
        np.testing.assert_array_equal(wa[k], wf[k])


def test_early_stopping_restores_best():
    model = tiny_llama(seed=2)
    cfg = MaskLearnerConfig(epochs=6, batch_size=5, patience=1, lr=0.5, predictor_lr=0.5, predictor_warmup=0.0, seed=0)
    learner = MaskLearner(model, model, cfg)
    val = random_examples(4, seed=5)
    hist = learner.fit(random_examples(10, seed=4), val, progress=False)
    best = min(h["val_objective"] for h in hist)
    assert evaluate(learner, val)["objective"] == pytest.approx(best, rel=1e-5)
    if len(hist) < 6:
        assert hist[-1]["val_objective"] >= best


def test_predictor_lr_zero_keeps_the_predictor_fixed():
    """``predictor_lr=0`` used to fall back to ``lr`` (``predictor_lr or lr``)."""
    from kpod_ops.weighting.training import _param_groups

    model = tiny_llama(seed=1)
    learner = MaskLearner(model, model, MaskLearnerConfig(lr=1e-2, predictor_lr=0.0))
    assert [g["lr"] for g in _param_groups(learner)] == [1e-2, 0.0]
    assert _param_groups(MaskLearner(model, model, MaskLearnerConfig(lr=1e-2, predictor_lr=None)))[1]["lr"] == 1e-2
    before = {n: p.detach().clone() for n, p in learner.predictor.named_parameters() if p.requires_grad}
    learner.fit(random_examples(4, seed=4), progress=False)
    for n, p in learner.predictor.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p, before[n], rtol=0, atol=0)
    with pytest.raises(KPODInputError, match="predictor_lr"):
        MaskLearnerConfig(predictor_lr=-1.0)


def test_fixed_mask_embedding_stays_the_mean_embedding_and_keeps_the_reading_gain():
    """With the predictor held fixed after the warm-up, a learned mask vector can be tuned to stand in for the hidden
    tokens (the reading gain falls, so hiding them costs less); ``mask_embedding="fixed"`` holds it at the mean
    input embedding, so once the warm-up is over the reading gain cannot move."""
    moved = {}
    for kind in ("learned", "fixed"):
        model = tiny_llama(seed=1)
        cfg = MaskLearnerConfig(epochs=3, batch_size=4, seed=3, num_prefixes=2, lr=5e-2, predictor_warmup=0.34, reading_gain=None,
                                train_predictor_after_warmup=False, mask_embedding=kind)
        learner = MaskLearner(model, model, cfg)
        start = learner.mask_embedding.detach().clone()
        hist = learner.fit(random_examples(12, seed=4), random_examples(4, seed=5), progress=False)
        moved[kind] = float((learner.mask_embedding.detach() - start).abs().max())
        assert ("mask_embedding" in learner.trainable_state()) == (kind == "learned")
        after = [h["val_reading_gain"] for h in hist if h["warmup_end_step"] is not None]
        if kind == "fixed":
            torch.testing.assert_close(start, learner.weighter.embedding.weight.mean(0), rtol=0, atol=0)
            assert len(after) >= 2 and max(after) - min(after) == 0.0
    assert moved["fixed"] == 0.0 and moved["learned"] > 0.0
    with pytest.raises(KPODInputError, match="^mask_embedding: expected one of"):
        MaskLearnerConfig(mask_embedding="zero")


def test_bad_input_is_reported():
    model = tiny_llama()
    with pytest.raises(KPODInputError, match="predictor_training"):
        MaskLearnerConfig(predictor_training="half")
    with pytest.raises(KPODInputError, match="tau"):
        MaskLearnerConfig(tau=0)
    learner = MaskLearner(model, model)
    ex = random_examples(1)[0]
    with pytest.raises(KPODInputError, match="duplicate"):
        learner.token_weights([ex, ex])
    no_answer = make_example(0, [3], [[4, 5]], [])
    with pytest.raises(KPODInputError, match="answer"):
        learner.fit([no_answer], progress=False)
    with pytest.raises(KPODInputError, match="token ids"):
        learner.token_weights([make_example(0, [3], [[4, VOCAB + 5]], [1])])
    with pytest.raises(KPODInputError, match="student"):
        MaskLearner("not a model", model)


# --- persistence ----------------------------------------------------------------------------------


def test_save_load_roundtrip_and_mismatch_fails_loudly(tmp_path, llama_learner):
    task = planted_task(5, seed=1)
    tok = task.tokenizer
    w = {ex.id: np.linspace(0.1, 0.9, ex.rationale_len).astype(np.float32) for ex in task.examples}
    path = save_token_weights(tmp_path / "w.npz", w, task.examples, tokenizer=tok, metadata={"alpha": 0.5})
    back = load_token_weights(path, task.examples, tokenizer=tok)
    for ex in task.examples:
        np.testing.assert_array_equal(back[ex.id], w[ex.id])
    assert set(load_token_weights(path)) == {ex.id for ex in task.examples}
    # a changed template/tokenisation shifts the rationale tokens: refuse
    ex = task.examples[2]
    shifted = make_example(2, ex.prompt_ids, [list(ex.rationale_ids[1:]) + [3]], list(ex.answer_ids))
    shifted = TokenizedExample(
        id=ex.id,
        input_ids=shifted.input_ids,
        prompt_len=shifted.prompt_len,
        step_spans=shifted.step_spans,
        answer_start=shifted.answer_start,
    )
    with pytest.raises(KPODInputError, match=f"{ex.id!r}.*first difference at token 0"):
        load_token_weights(path, [shifted])
    with pytest.raises(KPODInputError, match="no-such-id"):
        load_token_weights(path, [TokenizedExample("no-such-id", (1, 2), 1, ((1, 2),), 2)])
    other_tok = WordTokenizer(tok.words + ("extra",))
    assert tokenizer_fingerprint(other_tok) != tokenizer_fingerprint(tok)
    with pytest.raises(KPODInputError, match="fingerprint"):
        load_token_weights(path, task.examples, tokenizer=other_tok)
    with pytest.raises(KPODInputError, match="shape"):
        save_token_weights(tmp_path / "bad.npz", {**w, ex.id: w[ex.id][:-1]}, task.examples)
    assert not (tmp_path / "bad.npz").exists()
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(KPODInputError, match="junk.npz"):
        load_token_weights(tmp_path / "junk.npz")


# --- statistics, renormalisation, rendering --------------------------------------------------------


def test_stats_and_mean_one_renormalisation():
    task = planted_task(4, seed=2)
    w = {ex.id: np.where(np.array(task.roles[ex.id]) == "relevant", 0.9, 0.1).astype(np.float32) for ex in task.examples}
    s = weight_stats(w, task.examples, tokenizer=task.tokenizer, top_k=3)
    assert 0.1 <= s.mean <= 0.9 and s.min == pytest.approx(0.1) and s.max == pytest.approx(0.9)
    assert s.top_tokens[0][1] > s.bottom_tokens[0][1]
    assert s.bottom_tokens[0][0] in task.tokenizer.words and "kept" in str(s)
    r = renormalize_mean_one(w)
    for k, v in r.items():
        assert v.mean() == pytest.approx(1.0, rel=1e-6)
        np.testing.assert_allclose(v / v.max(), w[k] / w[k].max(), rtol=1e-6)
    with pytest.raises(KPODInputError):
        renormalize_mean_one({"z": np.zeros(3)})


def test_render_html_and_png(tmp_path):
    task = planted_task(1, seed=3)
    ex, tok = task.examples[0], task.tokenizer
    w = np.linspace(0.05, 0.95, ex.rationale_len)
    page = render_html(ex, w, tok, title="weights <demo>")
    assert page.count("<span") == ex.rationale_len and "&lt;demo&gt;" in page
    assert 'title="0.950"' in page and "rgba(214, 39, 40, 0.950)" in page
    png = render_png(ex, w, tok, tmp_path / "fig" / "w.png", title="demo")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
    with pytest.raises(KPODInputError, match="weights"):
        render_html(ex, w[:-1], tok)


def test_token_weighter_rejects_bad_embedding():
    with pytest.raises(KPODInputError, match="embedding"):
        TokenWeighter(torch.zeros(3))
    with pytest.raises(KPODInputError, match="num_heads"):
        TokenWeighter(torch.zeros(10, 6), num_heads=4)


# --- context: the weighter starts out looking at a token's neighbours -----------------------------


def test_weighter_attention_starts_local():
    """Replacing the token next to position i moves i's context vector far more than a distant one.

    The relative-position biases start as ALiBi-style distance penalties. With a zero start every
    head attended uniformly, the neighbour's identity reached a token diluted by 1/L, and on the
    planted task the weights learned "keep every number" (token identity) and saturated before
    they could learn "keep the number after the marker" (relevant vs distractor AUC about 0.5).
    """
    torch.manual_seed(0)
    weighter = TokenWeighter(torch.randn(50, 32))
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 50, (256, 16), generator=gen)
    mask = torch.ones_like(ids, dtype=torch.bool)
    i = 8
    with torch.no_grad():
        base = weighter.attention(weighter.embed(ids), mask)[:, i]

        def effect(j: int) -> float:
            changed = ids.clone()
            changed[:, j] = (ids[:, j] + torch.randint(1, 50, (256,), generator=gen)) % 50  # a different token
            return (weighter.attention(weighter.embed(changed), mask)[:, i] - base).norm(dim=-1).mean().item()

        assert effect(i - 1) > 2 * effect(i - 6)
        assert effect(i + 1) > 2 * effect(i + 6)


# --- the objective: normalized by default, the paper's sums one switch away ----------------------


def test_literal_switch_and_normalized_objective_agree_up_to_the_lengths():
    """``objective="normalized"`` with ``prefix_mean="all"`` divides the literal ``L_p`` by L*|a| and ``L_m``
    by L, per example (the default ``prefix_mean="sampled"`` weighs the prefixes differently:
    test_weighting_defaults.py)."""
    model = tiny_llama()
    exs = random_examples(5, seed=21)
    literal = MaskLearner(model, model, MaskLearnerConfig.literal(num_prefixes=3))
    normalized = MaskLearner(model, model, MaskLearnerConfig(num_prefixes=3, prefix_mean="all"))
    normalized.load_state_dict(literal.state_dict())
    assert literal.config.objective == "literal" and literal.config.alpha == 0.5 and literal.config.predictor_warmup == 0
    assert MaskLearnerConfig.literal(alpha=0.3).alpha == 0.3
    b = make_batch(exs)
    outs = []
    for learner in (literal, normalized):
        learner.eval()
        with torch.no_grad():
            outs.append(learner.objective(b, rng=np.random.default_rng(0), generator=torch.Generator().manual_seed(0)))
    lengths = np.array(b.lengths, dtype=np.float64)
    n_answer = np.array([a.numel() for a in b.answers], dtype=np.float64)
    # one example: the per-example ratio is exact
    one = make_batch(exs[:1])
    per = []
    for learner in (literal, normalized):
        with torch.no_grad():
            per.append(learner.objective(one, rng=np.random.default_rng(1), generator=torch.Generator().manual_seed(1)))
    assert per[1]["answer_loss"].item() == pytest.approx(per[0]["answer_loss"].item() / (lengths[0] * n_answer[0]), rel=1e-5)
    assert per[1]["mask_loss"].item() == pytest.approx(per[0]["mask_loss"].item() / lengths[0], rel=1e-5)
    assert outs[1]["answer_loss"] < outs[0]["answer_loss"]


# --- the caller's model is never changed -------------------------------------------------------------


@pytest.mark.parametrize("training", ["full", "lora", "frozen"])
def test_predictor_never_mutates_the_callers_model(training):
    model = tiny_llama(seed=4)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    modules = {n for n, _ in model.named_modules()}
    learner = MaskLearner(model, model, MaskLearnerConfig(predictor_training=training, epochs=1, batch_size=4, lora_r=2))
    learner.fit(random_examples(8, seed=6), progress=False)
    assert learner.predictor.model is not model
    assert {n for n, _ in model.named_modules()} == modules  # no LoRA layers injected
    for n, p in model.named_parameters():
        assert p.requires_grad == flags[n], n  # nothing frozen
        torch.testing.assert_close(p, before[n], rtol=0, atol=0)  # nothing trained


def test_copy_predictor_false_uses_the_model_in_place():
    model = tiny_llama(seed=4)
    learner = MaskLearner(model, model, MaskLearnerConfig(predictor_training="frozen", copy_predictor=False))
    assert learner.predictor.model is model and not any(p.requires_grad for p in model.parameters())


# --- collapse is reported, not returned silently ----------------------------------------------------


def test_fit_warns_with_cause_and_remedy_when_weights_collapse():
    """A predictor that never learns to read (lr 0) and an all-masking start: the warning names both."""
    model = tiny_llama(seed=5)
    cfg = MaskLearnerConfig(epochs=1, batch_size=4, predictor_lr=0.0, init_keep_logit=-12.0, predictor_warmup=0.0)
    learner = MaskLearner(model, model, cfg)
    with pytest.warns(DegenerateWeightsWarning, match="every token is masked.*never learned to read the rationale"):
        history = learner.fit(random_examples(8, seed=7), progress=False)
    assert "every token is masked" in history[-1]["degenerate"]
    assert "val_reading_gain" in history[-1] and "val_prefix_reading_gain" in history[-1]
    weights = learner.token_weights(random_examples(8, seed=7))
    assert is_degenerate(weights)
    with pytest.raises(KPODInputError, match="allow_degenerate"):
        renormalize_mean_one(weights)


def test_literal_objective_with_large_answer_loss_masks_nothing_and_says_why():
    model = tiny_llama(seed=5)
    cfg = MaskLearnerConfig.literal(epochs=1, batch_size=4, init_keep_logit=12.0)
    learner = MaskLearner(model, model, cfg)
    with pytest.warns(DegenerateWeightsWarning, match="no token is masked.*objective='literal'"):
        learner.fit(random_examples(8, seed=7), progress=False)


# --- input validation (config, weights) -----------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"num_prefixes": 2.5}, "num_prefixes"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"epochs": 0}, "epochs"),
        ({"tau": math.inf}, "tau"),
        ({"tau": math.nan}, "tau"),
        ({"mlp_hidden": True}, "mlp_hidden"),
        ({"alpha": math.nan}, "alpha"),
        ({"lr": math.inf}, "lr"),
        ({"tau_final": math.inf}, "tau_final"),
        ({"grad_clip": -1.0}, "grad_clip"),
        ({"num_heads": 0}, "num_heads"),
        ({"seed": 1.5}, "seed"),
        ({"hard": "yes"}, "hard"),
        ({"lora_targets": 3}, "lora_targets"),
    ],
)
def test_config_rejects_bad_values_at_construction(kwargs, name):
    with pytest.raises(KPODInputError, match=rf"^{name}: expected .*, got "):
        MaskLearnerConfig(**kwargs)


def test_config_accepts_numpy_scalars_as_plain_python():
    cfg = MaskLearnerConfig(batch_size=np.int64(4), tau=np.float32(0.5), seed=np.int32(2))
    assert type(cfg.batch_size) is int and type(cfg.tau) is float and type(cfg.seed) is int


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_weight_functions_reject_non_finite(bad):
    w = {"a": np.array([0.1, 0.9, bad]), "b": np.array([0.2, 0.8])}
    with pytest.raises(KPODInputError, match=r"weights\['a'\]: expected finite weights"):
        renormalize_mean_one(w)
    with pytest.raises(KPODInputError, match=r"weights\['a'\]: expected finite weights"):
        weight_stats(w)
    with pytest.raises(KPODInputError, match="finite"):
        is_degenerate(w)


def test_is_degenerate_flags_collapse_saturation_and_flat_weights():
    rng = np.random.default_rng(0)
    informative = {f"e{i}": np.where(rng.random(20) < 0.2, 0.9, 0.05) for i in range(8)}
    assert not is_degenerate(informative) and degeneracy(informative) is None
    collapsed = {k: np.full(v.shape, 0.003) for k, v in informative.items()}  # "kept 0.0%"
    saturated = {k: np.full(v.shape, 0.97) + 0.02 * rng.random(v.shape) for k, v in informative.items()}
    flat = {k: 0.5 + 0.01 * rng.random(v.shape) - 0.005 for k, v in informative.items()}  # about half kept
    mostly_masked = {k: np.where(np.arange(v.size) == 0, 0.0, 0.2 * rng.random(v.size)) for k, v in informative.items()}
    for w, why in [(collapsed, "every token is masked"), (saturated, "no token is masked"),
                   (flat, "uniform"), (mostly_masked, "every token is masked")]:  # fmt: skip
        assert is_degenerate(w) and why in degeneracy(w)
    assert is_degenerate(np.full(5, 0.5))  # one array works too


def test_degenerate_weights_are_flagged_and_refused_unless_allowed():
    collapsed = {"a": np.full(6, 0.003, dtype=np.float32), "b": np.full(4, 0.002, dtype=np.float32)}
    s = weight_stats(collapsed)
    assert s.degenerate is not None and "DEGENERATE" in str(s)
    with pytest.raises(KPODInputError, match="allow_degenerate=True"):
        renormalize_mean_one(collapsed)
    with pytest.warns(UserWarning, match="degenerate"):
        r = renormalize_mean_one(collapsed, allow_degenerate=True)
    np.testing.assert_allclose(r["a"], 1.0)
    good = {"a": np.array([0.9, 0.05, 0.05, 0.8]), "b": np.array([0.1, 0.95])}
    assert weight_stats(good).degenerate is None and "DEGENERATE" not in str(weight_stats(good))
