"""The components assembled as a user would: built-in data → tokens with step spans → difficulty
(fused op, reduction="none") → clusters → schedule → collator → fused loss → an optimiser step."""

from __future__ import annotations

import numpy as np
import torch
from data_helpers import bpe_tokenizer
from transformers import LlamaConfig, LlamaForCausalLM

from kpod_ops import keypoint_cross_entropy
from kpod_ops.curriculum import ProgressiveSchedule, cluster_questions, dataset_step_difficulties, question_embeddings
from kpod_ops.data import KPODCollator, load_builtin, tokenize_examples
from kpod_ops.losses.reference import keypoint_cross_entropy_reference


def test_kpod_loop_end_to_end_on_arith_cot():
    torch.manual_seed(0)
    tokenizer = bpe_tokenizer("bytelevel")
    examples = load_builtin("arith-cot", "train", n=24, seed=0)
    tokenized = tokenize_examples(examples, tokenizer)
    assert all(te.n_steps >= 2 for te in tokenized)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    student = LlamaForCausalLM(config)

    # token weights: any per-token array works here (the mask learner produces them in KPOD)
    rng = np.random.default_rng(0)
    weights = {te.id: rng.uniform(0.2, 0.9, te.rationale_len).astype(np.float32) for te in tokenized}
    difficulties = dataset_step_difficulties(student, tokenized, weights, progress=False)
    for te in tokenized:
        d = np.asarray(difficulties[te.id])
        assert d.shape == (te.n_steps,) and (d >= 0).all() and np.isfinite(d).all()
    labels = cluster_questions(question_embeddings(tokenized, student), n_clusters=3, seed=0)
    clusters = dict(zip([te.id for te in tokenized], labels.tolist()))
    n_epochs = 6
    schedule = ProgressiveSchedule.build(difficulties, clusters, n_epochs=n_epochs)

    collator = KPODCollator(tokenizer, token_weights=weights)

    def full_rationale_loss() -> float:
        collator.given_steps = {te.id: 0 for te in tokenized}
        batch = collator(tokenized)
        with torch.no_grad():
            logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            return float(keypoint_cross_entropy(logits, batch["labels"], batch["token_weights"], batch["loss_start"], shift=True, reduction="sum"))

    before = full_rationale_loss()
    optimizer = torch.optim.AdamW(student.parameters(), lr=3e-3)
    previous = {te.id: te.n_steps for te in tokenized}
    for epoch in range(1, n_epochs + 1):
        given = schedule.given_steps(epoch)
        assert all(0 <= given[i] <= previous[i] for i in given)  # C1, C2
        previous = given
        collator.given_steps = given
        batch = collator(tokenized)
        for b, te in enumerate(tokenized):  # loss_start is the first token of step c_i + 1
            assert int(batch["loss_start"][b]) == te.loss_start(given[te.id])
            assert (batch["labels"][b, : te.loss_start(given[te.id])] == -100).all()
        logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss = keypoint_cross_entropy(
            logits, batch["labels"], batch["token_weights"], batch["loss_start"], shift=True, reduction="sum"
        ) / len(tokenized)
        reference = keypoint_cross_entropy_reference(
            logits.detach(), batch["labels"], batch["token_weights"], batch["loss_start"], shift=True, reduction="sum"
        ) / len(tokenized)
        torch.testing.assert_close(loss.detach(), reference, rtol=1e-4, atol=1e-4)
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert all(c == 0 for c in schedule.given_steps(n_epochs).values())  # C3: full rationale at the end
    assert full_rationale_loss() < before  # the curriculum's steps taught the student something
