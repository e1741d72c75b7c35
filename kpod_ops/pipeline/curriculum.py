"""The curriculum stages: step difficulties, question clusters and the progressive schedule."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from ..curriculum import ProgressiveSchedule, cluster_questions, dataset_step_difficulties, question_embeddings
from ..data.tokenized import TokenizedExample


def score_difficulties(
    student: torch.nn.Module,
    examples: Sequence[TokenizedExample],
    weights: Mapping[str, np.ndarray] | None,
    *,
    normalisation: str = "softmax",
    batch_size: int = 32,
    progress: bool = True,
) -> dict[str, list[float]]:
    """Per-step difficulty d_k (Eq. 8) of every example under the pre-trained ``student``."""
    d = dataset_step_difficulties(
        student, list(examples), None if normalisation == "uniform" else weights,
        normalisation=normalisation, batch_size=batch_size, progress=progress,
    )
    return {str(k): [float(x) for x in v] for k, v in d.items()}


def cluster(student: torch.nn.Module, examples: Sequence[TokenizedExample], *, n_clusters: int = 5, seed: int = 0) -> dict[str, int]:
    """K-means cluster of every question (mean student input embedding of its prompt tokens)."""
    labels = cluster_questions(question_embeddings(list(examples), student), n_clusters, seed=seed)
    return {ex.id: int(label) for ex, label in zip(examples, labels)}


def build_schedule(
    difficulties: Mapping[str, Sequence[float]],
    clusters: Mapping[str, int],
    *,
    n_epochs: int,
    beta: float = 12.0,
    p: float = 0.5,
    c0_ratio: float = 0.3,
    solver: str = "ftgp",
    progressive: bool = True,
) -> ProgressiveSchedule:
    """The progressive schedule over ``n_epochs`` (T = n_epochs // 2); ``progressive=False``: c ≡ 0."""
    return ProgressiveSchedule.build(
        {k: np.asarray(v, dtype=np.float64) for k, v in difficulties.items()}, dict(clusters),
        n_epochs=n_epochs, beta=beta, p=p, c0_ratio=c0_ratio, solver=solver, progressive=progressive,
    )


def schedule_to_json(schedule: ProgressiveSchedule) -> dict:
    """The schedule's ``state_dict`` with tensors as lists (written as JSON, no pickle)."""
    state = schedule.state_dict()
    return {k: (v.tolist() if isinstance(v, torch.Tensor) else [s.tolist() for s in v] if k == "selections" else v)
            for k, v in state.items()}


def schedule_from_json(data: dict) -> ProgressiveSchedule:
    state = dict(data)
    state["n_steps"] = torch.tensor(state["n_steps"], dtype=torch.int64)
    state["given0"] = torch.tensor(state["given0"], dtype=torch.int64)
    state["selections"] = [torch.tensor(s, dtype=torch.int64) for s in state["selections"]]
    return ProgressiveSchedule.from_state_dict(state)
