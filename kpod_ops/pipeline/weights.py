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
from .config import check_floor


class DegenerateWeightsError(KPODInputError):
    """The mask learner collapsed: its weights carry no keypoint information."""


# restart k of the mask learner is seeded with seed + k * _RESTART_SEED_STRIDE (restart 0: the run's seed)
_RESTART_SEED_STRIDE = 100_003


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
    allow_degenerate: bool = False,
    progress: bool = True,
) -> LearnedWeights:
    """Fit a mask learner on ``train`` (early stopping on ``val``) and weight the examples of ``weigh``.

    With ``restarts`` > 1, that many learners are fitted, restart ``k`` seeded with ``config.seed + k * 100003``,
    and the one with the lowest objective on ``val`` (``train`` if None; the same noise and prefixes for every
    restart) is kept, non-degenerate ones first: the learner's fit is not convex, and which keypoints a restart
    finds depends on its predictor's warm-up. Raises :class:`DegenerateWeightsError` when the kept weights are
    degenerate, unless ``allow_degenerate``.
    """
    if isinstance(restarts, bool) or not isinstance(restarts, numbers.Integral) or restarts < 1:
        raise KPODInputError(f"restarts: expected an integer >= 1, got {restarts!r}")
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
