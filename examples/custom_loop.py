"""The whole KPOD method in a plain PyTorch loop, on the tiny student and the built-in arith-cot data.

Every step uses a public component of kpod_ops, in the order the method needs them:

1. a tiny Llama-style student and its tokenizer, built in code (``kpod_ops.models``);
2. warm-up: language-model pre-training on ``arith-text`` (arithmetic facts, number sense,
   simple stories; no worked solutions), so that the student's per-token losses mean something;
3. the mask learner: keypoint weights for every rationale token (``MaskLearner``);
4. step difficulties under the warmed-up student (Eq. 8) and k-means question clusters;
5. the progressive schedule: how many rationale steps each question is given, epoch by epoch;
6. training with ``KPODCollator`` and the fused loss (``shift=True``: the collator's labels are
   not shifted), normalised by the number of sequences in the global batch, which gradient
   accumulation does not change;
7. greedy generation from exactly the training prompt tokens, answer extraction and accuracy.

Run it as ``python examples/custom_loop.py`` (a few minutes on a laptop CPU); ``--help`` lists the
sizes. ``kpod distill --preset quick`` runs the same method with checkpoints and a report.
"""

from __future__ import annotations

import argparse
import copy

import numpy as np
import torch

from kpod_ops import keypoint_cross_entropy
from kpod_ops.curriculum import ProgressiveSchedule, cluster_questions, dataset_step_difficulties, question_embeddings
from kpod_ops.data import KPODCollator, answers_match, extract_answer, load_builtin, tokenize_examples
from kpod_ops.models import tiny_student, tiny_tokenizer
from kpod_ops.pipeline import learner_config, preset_config
from kpod_ops.weighting import MaskLearner, degeneracy, renormalize_mean_one


def warm_up(student, tokenizer, texts, *, epochs: int, batch_size: int, lr: float, block: int = 128) -> None:
    """Causal-LM pre-training on packed blocks of text (mean token cross-entropy)."""
    flat = [t for ids in tokenizer(texts)["input_ids"] for t in ids + [tokenizer.eos_token_id]]
    blocks = torch.tensor(flat[: len(flat) // block * block]).view(-1, block)
    optimizer = torch.optim.AdamW(student.parameters(), lr=lr)
    student.train()
    for epoch in range(epochs):
        order = torch.randperm(len(blocks), generator=torch.Generator().manual_seed(epoch))
        for s in range(0, len(blocks), batch_size):
            x = blocks[order[s : s + batch_size]]
            logits = student(input_ids=x).logits
            loss = keypoint_cross_entropy(logits, x, shift=True, reduction="mean")
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        print(f"warm-up epoch {epoch + 1}: loss {loss.item():.3f}")


def train_kpod(student, tokenizer, examples, weights, schedule, *, epochs: int, batch_size: int, accumulation: int, lr: float) -> None:
    """The KPOD training loop: the schedule's c_i(t) every epoch, weighted fused loss, accumulation."""
    collator = KPODCollator(tokenizer, token_weights=weights)
    optimizer = torch.optim.AdamW(student.parameters(), lr=lr)
    micro = batch_size // accumulation
    student.train()
    for epoch in range(1, epochs + 1):  # the schedule's epochs are 1-indexed
        collator.given_steps = schedule.given_steps(epoch)
        order = np.random.default_rng(epoch).permutation(len(examples))
        for s in range(0, len(order), batch_size):
            chosen = [examples[i] for i in order[s : s + batch_size]]
            optimizer.zero_grad()
            step_loss = 0.0
            for j in range(0, len(chosen), micro):
                batch = collator(chosen[j : j + micro])
                logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                loss = keypoint_cross_entropy(
                    logits, batch["labels"], batch["token_weights"], batch["loss_start"], shift=True, reduction="sum"
                ) / len(chosen)  # per sequence of the *global* batch: the same whatever `accumulation` is
                loss.backward()
                step_loss += loss.item()
            torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
            optimizer.step()
        mean_given = np.mean(list(collator.given_steps.values()))
        print(f"epoch {epoch}: {mean_given:.2f} steps given on average, last step's loss per sequence {step_loss:.3f}")


@torch.no_grad()
def accuracy(student, tokenizer, examples, *, max_new_tokens: int, batch_size: int = 64) -> float:
    """Greedy generation from the training prompt tokens (left-padded batches, KV cache)."""
    student.eval()
    tokenized = tokenize_examples(examples, tokenizer)
    prompts = [list(te.input_ids[: te.prompt_len]) for te in tokenized]  # exactly the training prompt tokens
    correct = 0
    for s in range(0, len(prompts), batch_size):
        chunk = prompts[s : s + batch_size]
        width = max(len(p) for p in chunk)
        ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(p)) + p for p in chunk])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk])
        out = student.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                               pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        for ex, row in zip(examples[s : s + batch_size], out[:, width:]):
            text = tokenizer.decode(row, skip_special_tokens=True)
            correct += answers_match(extract_answer(text), ex.answer)
    return correct / len(examples)


def main(argv: list[str] | None = None) -> float:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--n-train", type=int, default=1000)
    p.add_argument("--n-test", type=int, default=200)
    p.add_argument("--n-text", type=int, default=2000, help="warm-up texts")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--warmup-epochs", type=int, default=2)
    p.add_argument("--mask-examples", type=int, default=1000)
    p.add_argument("--mask-batch-size", type=int, default=16)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--accumulation", type=int, default=2, help="micro-batches per optimiser step")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--max-new-tokens", type=int, default=160)
    p.add_argument("--allow-degenerate", action="store_true", help="continue even if the mask learner collapses")
    args = p.parse_args(argv)
    torch.manual_seed(0)

    # 1. student and tokenizer, built in code
    tokenizer = tiny_tokenizer()
    student = tiny_student(tokenizer, hidden_size=args.hidden, num_layers=args.layers, seed=0)

    # 2. warm-up on arith-text
    warm_up(student, tokenizer, load_builtin("arith-text", n=args.n_text, seed=0), epochs=args.warmup_epochs, batch_size=32, lr=3e-3)
    train = tokenize_examples(load_builtin("arith-cot", "train", n=args.n_train, seed=0), tokenizer)
    test = load_builtin("arith-cot", "test", n=args.n_test, seed=0)

    # 3. keypoint weights: the mask learner reads the student's (frozen) embeddings; its answer
    #    predictor is a copy of the student, which it trains (the student itself is untouched).
    #    Its settings are those of `kpod distill --preset quick` (see the comment there: a fixed
    #    warm-up on nearly unmasked rationales, then alpha 0.1).
    learner = MaskLearner(
        student.get_input_embeddings().weight.detach().clone(),
        copy.deepcopy(student),
        learner_config({**preset_config("quick").weights.learner, "batch_size": args.mask_batch_size}, seed=0),
    )
    learner.fit(train[: args.mask_examples], progress=False)
    weights = learner.token_weights(train)
    flat = np.concatenate(list(weights.values()))
    print(f"token weights: mean {flat.mean():.3f}, {(flat > 0.5).mean():.1%} of rationale tokens above 0.5")
    reason = degeneracy(weights)
    if reason is not None:
        print(f"degenerate token weights: {reason}")
        if not args.allow_degenerate:
            raise SystemExit("stopping: the mask learner collapsed (pass --allow-degenerate to continue)")

    # 4. step difficulties under the warmed-up student, and question clusters
    difficulties = dataset_step_difficulties(student, train, weights, progress=False)
    clusters = cluster_questions(question_embeddings(train, student), n_clusters=5, seed=0)

    # 5. the progressive schedule (T = epochs // 2; full rationales from epoch T + 1 on)
    schedule = ProgressiveSchedule.build(difficulties, dict(zip([te.id for te in train], clusters.tolist())), n_epochs=args.epochs)
    print(schedule)

    # 6. training: weights rescaled to mean 1 per rationale, so they redistribute the loss
    #    instead of shrinking it (raw w < 1 would act like a smaller learning rate)
    before = accuracy(student, tokenizer, test, max_new_tokens=args.max_new_tokens)
    train_kpod(student, tokenizer, train, renormalize_mean_one(weights, allow_degenerate=args.allow_degenerate), schedule,
               epochs=args.epochs, batch_size=args.batch_size, accumulation=args.accumulation, lr=args.lr)

    # 7. held-out accuracy
    after = accuracy(student, tokenizer, test, max_new_tokens=args.max_new_tokens)
    print(f"held-out accuracy: {before:.1%} before distillation, {after:.1%} after ({len(test)} questions)")
    return after


if __name__ == "__main__":
    main()
