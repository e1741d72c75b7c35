"""Every public curriculum entry point answers bad input with KPODInputError (argument, expected, got)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kpod_ops.curriculum import (
    ProgressiveSchedule,
    StepTable,
    cluster_questions,
    combine_step_difficulties,
    question_embeddings,
    rationale_nll,
)
from kpod_ops.curriculum.scoring import _scoring_batch
from kpod_ops.data import load_builtin, tokenize_examples
from kpod_ops.errors import KPODInputError


@pytest.fixture(scope="module")
def tokenized():
    from kpod_ops.models import tiny_tokenizer

    return tokenize_examples(load_builtin("arith-cot", n=3, seed=1), tiny_tokenizer())


def test_example_lists(tokenized):
    one = tokenized[0]
    cases = [
        (lambda: _scoring_batch([]), r"examples: expected a non-empty list of TokenizedExample, got an empty list"),
        (lambda: _scoring_batch(one), r"examples: expected a list of TokenizedExample, got a single TokenizedExample"),
        (lambda: _scoring_batch([one, "x"]), r"examples\[1\]: expected a TokenizedExample, got str"),
        (lambda: combine_step_difficulties(one, {}), r"got a single TokenizedExample \(wrap it in a list"),
        (lambda: combine_step_difficulties(tokenized, [1.0]), r"nll: expected a dict"),
        (lambda: question_embeddings(one, embed_fn=lambda b: np.ones((len(b), 2))), r"examples: expected a list"),
        (lambda: question_embeddings(tokenized, embed_fn=lambda b: np.ones((len(b), 2)), batch_size=0), r"batch_size"),
        (lambda: rationale_nll(torch.nn.Linear(2, 2), tokenized, batch_size="8"), r"batch_size: expected an int >= 1, got '8'"),
        (lambda: rationale_nll("model", tokenized), r"model: expected a torch.nn.Module"),
        (lambda: one.loss_start(one.n_steps + 1), rf"given_steps: expected an int in \[0, {one.n_steps}\]"),
        (lambda: one.loss_start(torch.tensor([1, 2])), r"given_steps: expected an int"),
    ]
    for call, message in cases:
        with pytest.raises(KPODInputError, match=message):
            call()
    assert one.loss_start(np.int64(0)) == one.prompt_len


def test_clusters_and_difficulties():
    cases = [
        (lambda: cluster_questions([[1.0], [2.0]], "abc"), r"n_clusters: expected an int K >= 1, got 'abc'"),
        (lambda: cluster_questions([[1.0], [2.0]], 2.5), r"n_clusters"),
        (lambda: cluster_questions("abc"), r"embeddings: expected a 2-D array of numbers"),
        (lambda: StepTable.from_rows({"a": ["x", "y"]}), r"difficulties\['a'\]: expected a 1-D array of per-step difficulties"),
        (lambda: StepTable.from_rows(3.0), r"difficulties: expected a dict"),
        (lambda: ProgressiveSchedule.build({}, [], n_epochs=4), r"difficulties: expected per-step difficulties for at least one"),
        (lambda: ProgressiveSchedule.build({"a": [1.0]}, [0], n_epochs=4, p="0.5"), r"p: expected a finite p >= 0"),
        (lambda: ProgressiveSchedule.build({"a": [1.0]}, [0], n_epochs=4, c0_ratio=1.5), r"c0_ratio: expected a ratio"),
        (lambda: ProgressiveSchedule.build({"a": [1.0]}, [0], n_epochs=4, n_clusters=0), r"n_clusters"),
        (lambda: ProgressiveSchedule.build({"a": [1.0]}, [0], n_epochs=4, solver_options={"epsilon": 0.9}), r"epsilon"),
    ]
    for call, message in cases:
        with pytest.raises(KPODInputError, match=message):
            call()
    assert cluster_questions(np.ones((3, 2)), np.int64(1)).tolist() == [0, 0, 0]
