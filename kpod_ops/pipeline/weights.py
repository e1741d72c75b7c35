"""The token-weight stage: train the mask learner on the warmed-up student, weight every rationale.

The answer predictor is a *copy* of the student (the learner trains it), so the student itself is
never changed. Degenerate weights (``kpod_ops.weighting.is_degenerate``) stop the run unless the
caller allows them; either way the verdict is returned for the report.
"""

from __future__ import annotations

import copy
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from ..data.tokenized import TokenizedExample
from ..errors import KPODInputError
from ..weighting import MaskLearner, MaskLearnerConfig, degeneracy, renormalize_mean_one
from ..weighting.training import _EVAL_SEED_OFFSET, evaluate
from .config import check_floor, check_select


class DegenerateWeightsError(KPODInputError):
    """The mask learner collapsed: its weights carry no keypoint information."""


# restart k of the mask learner is seeded with seed + k * _RESTART_SEED_STRIDE (restart 0: the run's seed)
_RESTART_SEED_STRIDE = 100_003


def agreement(weights: Sequence[dict[str, np.ndarray]]) -> list[float]:
    """Per set of token weights, its mean Pearson correlation with each other set over every token of
    every example (examples in id order). A set with no spread correlates 0 with the others.

    Restarts that found the keypoints agree with each other; one that missed them (ranked words above
    numbers, or kept a few arbitrary tokens) disagrees with the rest, so the highest agreement picks a
    good restart whenever most of them are good, without knowing which tokens are keypoints.
    """
    if len(weights) < 2:
        raise KPODInputError(f"agreement: expected at least 2 sets of token weights, got {len(weights)}")
    ids = sorted(weights[0])
    for i, w in enumerate(weights[1:], 1):
        if sorted(w) != ids:
            raise KPODInputError(f"agreement: expected every set to weigh the same examples, set {i} weighs others")
    flat = np.stack([np.concatenate([np.asarray(w[k], dtype=np.float64).ravel() for k in ids]) for w in weights])
    centred = flat - flat.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(centred, axis=1)
    safe = np.where(norms > 0, norms, 1.0)
    corr = (centred @ centred.T) / np.outer(safe, safe)
    corr[norms == 0, :] = 0.0
    corr[:, norms == 0] = 0.0
    n = len(weights)
    return [float((corr[i].sum() - corr[i, i]) / (n - 1)) for i in range(n)]


@dataclass
class LearnedWeights:
    weights: dict[str, np.ndarray]  # raw w in (0, 1) per rationale token, by example id
    degenerate: str | None  # why they are degenerate, or None
    history: list[dict] = field(default_factory=list)
    # one record per restart (seed, validation objective and terms, degenerate, chosen, and its ``weights``)
    restarts: list[dict] = field(default_factory=list)


def learner_config(settings: dict[str, Any], seed: int) -> MaskLearnerConfig:
    """``MaskLearnerConfig`` from the run's ``weights.learner`` settings (unknown keys are an error)."""
    fields = set(MaskLearnerConfig.__dataclass_fields__)
    unknown = sorted(set(settings) - fields)
    if unknown:
        raise KPODInputError(f"weights.learner: unknown keys {unknown}; expected MaskLearnerConfig fields {sorted(fields)}")
    return MaskLearnerConfig(**{**settings, "seed": seed})


def learn_weights(
    student: torch.nn.Module,
    train: Sequence[TokenizedExample],
    val: Sequence[TokenizedExample] | None,
    weigh: Sequence[TokenizedExample],
    config: MaskLearnerConfig,
    *,
    restarts: int = 1,
    select: str = "objective",
    allow_degenerate: bool = False,
    progress: bool = True,
) -> LearnedWeights:
    """Fit a mask learner on ``train`` (early stopping on ``val``) and weight the examples of ``weigh``.

    With ``restarts`` > 1, that many learners are fitted, restart ``k`` seeded with ``config.seed + k * 100003``:
    the learner's fit is not convex, and which keypoints a restart finds depends on its draw. Non-degenerate
    restarts come first; among them ``select="objective"`` keeps the lowest objective on ``val`` (``train`` if
    None; the same noise and prefixes for every restart), ``select="agreement"`` (3 restarts or more) the one
    whose weights correlate most with the others' (:func:`agreement`). Raises :class:`DegenerateWeightsError`
    when the kept weights are degenerate, unless ``allow_degenerate``.
    """
    if isinstance(restarts, bool) or not isinstance(restarts, numbers.Integral) or restarts < 1:
        raise KPODInputError(f"restarts: expected an integer >= 1, got {restarts!r}")
    check_select(select, restarts)
    embedding = student.get_input_embeddings().weight.detach().clone()
    scored_on = list(val) if val else list(train)
    runs: list[dict] = []
    for k in range(int(restarts)):
        c = replace(config, seed=config.seed + k * _RESTART_SEED_STRIDE)
        predictor = copy.deepcopy(student)
        predictor.train()
        # the learner's initialisation draws from torch's global generator: seeded here, the weights depend on the
        # run's seed alone, not on which earlier stages this process computed or reused
        torch.manual_seed(c.seed)
        learner = MaskLearner(embedding, predictor, c).to(next(student.parameters()).device)
        history = learner.fit(list(train), list(val) if val else None, progress=progress)
        # every restart scored on one draw of noise and prefixes
        scored = evaluate(learner, scored_on, seed=config.seed + _EVAL_SEED_OFFSET) if restarts > 1 else {}
        weights = learner.token_weights(list(weigh))
        runs.append({"seed": c.seed, **{f"val_{key}": scored[key] for key in ("objective", "answer_loss", "kept")
                                       if key in scored}, "degenerate": degeneracy(weights), "history": history,
                     "weights": weights})
        del learner, predictor
    if select == "agreement":
        for run, score in zip(runs, agreement([run["weights"] for run in runs])):
            run["agreement"] = score
        best = min(range(len(runs)), key=lambda i: (runs[i]["degenerate"] is not None, -runs[i]["agreement"]))
    else:
        best = min(range(len(runs)), key=lambda i: (runs[i]["degenerate"] is not None, runs[i].get("val_objective", 0.0)))
    for i, run in enumerate(runs):
        run["chosen"] = i == best
    kept = runs[best]
    reason = kept["degenerate"]
    if reason is not None and not allow_degenerate:
        raise DegenerateWeightsError(
            f"token weights: expected informative keypoint weights, got degenerate ones: {reason}"
            f"{f' (all {restarts} restarts)' if restarts > 1 else ''}. "
            "Change weights.learner (e.g. alpha, epochs, predictor_warmup, tau_final) in --config, raise weights.restarts, "
            "or pass --allow-degenerate to train with them anyway (the report records it)."
        )
    return LearnedWeights(kept["weights"], reason, kept["history"], runs if restarts > 1 else [])


def with_floor(weights: dict[str, np.ndarray], floor: float) -> dict[str, np.ndarray]:
    """``floor + (1 - floor) * w`` per token: every token keeps at least ``floor`` of its loss.

    The mask learner drives the weights of tokens the answer does not need (the words of a
    rationale) to ~0. A pre-trained student already writes those words; a small student still
    learning the language of its rationales never learns them with weight 0, and its generations
    fall apart. A floor keeps them trained while the keypoints get the extra weight. Applied to the
    learned weights in [0, 1] (before renormalising to mean 1), it fixes the contrast between a
    keypoint (w = 1) and a masked token (w = 0) at ``1 / floor`` whatever the seed's mean weight.
    ``floor=0`` returns ``weights`` unchanged.
    """
    check_floor(floor)
    if floor == 0:
        return weights
    return {k: (floor + (1.0 - floor) * w).astype(np.float32) for k, w in weights.items()}


def weights_for_loss(weights: dict[str, np.ndarray], floor: float, *, renormalize: bool,
                     allow_degenerate: bool) -> dict[str, np.ndarray]:
    """The weights the loss uses: ``floor + (1 - floor) * w`` on the learned ``w``, then (``renormalize``)
    scaled to mean 1 per rationale.

    Degeneracy is a property of the learned weights, so they are the ones checked (a floor of 0.5
    makes every token count as kept): degenerate ones are refused unless ``allow_degenerate``.
    """
    if not renormalize:
        return with_floor(weights, floor)
    # the learned weights, checked (degenerate ones refused or warned about) and renormalised; with a floor
    # only the check is used, and the floored weights are renormalised below
    checked = renormalize_mean_one(weights, allow_degenerate=allow_degenerate)
    if floor == 0:
        return checked
    return {k: (w / w.mean()).astype(np.float32) if w.size else w for k, w in with_floor(weights, floor).items()}
