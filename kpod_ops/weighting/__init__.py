"""The mask learner: which rationale tokens are keypoints (KPOD paper §3.3).

``MaskLearner`` = ``TokenWeighter`` (frozen student embedding -> self-attention -> MLP -> sigmoid)
+ a Gumbel-sigmoid mask on embeddings + an ``AnswerPredictor`` (any Hugging Face LM) that must
predict the answer from the question and masked rationale prefixes. ``fit`` trains it on
``TokenizedExample`` sequences; ``token_weights`` returns deterministic weights per example, which
``save_token_weights``/``load_token_weights`` persist with the tokens they belong to.
"""

from .config import MaskLearnerConfig
from .degenerate import DegenerateWeightsWarning, degeneracy, is_degenerate
from .generator import TokenWeighter
from .gumbel import apply_mask, gumbel_sigmoid
from .learner import MaskLearner
from .predictor import AnswerPredictor
from .prefixes import sample_prefix_lengths
from .render import render_html, render_png
from .stats import WeightStats, keypoint_ranking, renormalize_mean_one, weight_stats
from .store import load_token_weights, save_token_weights, tokenizer_fingerprint
from .training import evaluate, fit

__all__ = [
    "AnswerPredictor",
    "DegenerateWeightsWarning",
    "MaskLearner",
    "MaskLearnerConfig",
    "TokenWeighter",
    "WeightStats",
    "apply_mask",
    "degeneracy",
    "evaluate",
    "fit",
    "gumbel_sigmoid",
    "is_degenerate",
    "load_token_weights",
    "render_html",
    "render_png",
    "renormalize_mean_one",
    "sample_prefix_lengths",
    "save_token_weights",
    "token_weights",
    "tokenizer_fingerprint",
    "weight_stats",
    "keypoint_ranking",
]


def token_weights(learner: MaskLearner, examples, *, batch_size: int = 64):
    """Deterministic weights of ``examples`` from a trained ``learner`` (see ``MaskLearner.token_weights``)."""
    return learner.token_weights(examples, batch_size=batch_size)
