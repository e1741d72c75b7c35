"""The mask learner: which rationale tokens are keypoints (KPOD paper §3.3).

``MaskLearner`` = ``TokenWeighter`` (frozen student embedding -> self-attention -> MLP -> sigmoid)
+ a Gumbel-sigmoid mask on embeddings + an ``AnswerPredictor`` (any Hugging Face LM) that must
predict the answer from the question and masked rationale prefixes. ``MaskLearner.fit`` trains it on
``TokenizedExample`` sequences; ``MaskLearner.token_weights`` returns deterministic weights per example,
which ``save_token_weights``/``load_token_weights`` persist with the tokens they belong to.
"""

from .config import MaskLearnerConfig
from .degenerate import DegenerateWeightsWarning, degeneracy, is_degenerate
from .generator import TokenWeighter
from .gumbel import apply_mask
from .learner import MaskLearner
from .predictor import AnswerPredictor
from .render import render_html, render_png
from .stats import WeightStats, keypoint_ranking, renormalize_mean_one, weight_stats
from .store import load_token_weights, save_token_weights, tokenizer_fingerprint

__all__ = [
    "AnswerPredictor",
    "DegenerateWeightsWarning",
    "MaskLearner",
    "MaskLearnerConfig",
    "TokenWeighter",
    "WeightStats",
    "apply_mask",
    "degeneracy",
    "is_degenerate",
    "load_token_weights",
    "render_html",
    "render_png",
    "renormalize_mean_one",
    "save_token_weights",
    "tokenizer_fingerprint",
    "weight_stats",
    "keypoint_ranking",
]
