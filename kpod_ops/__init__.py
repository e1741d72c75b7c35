"""kpod_ops: Keypoint-based Progressive chain-of-thought Distillation (KPOD, ICML 2024) as a toolkit.

Three pieces for your own training loop: a fused keypoint-weighted, step-truncated cross-entropy
(C++/CUDA, ``torch.ops.kpod.*``), a mask learner that finds keypoint tokens, and a progressive
curriculum scheduler; plus the data layer they share (steps, token spans, the collator).
See the README for examples.
"""

from ._extension import fused_available
from .curriculum import (
    SOLVERS,
    DifficultyBudget,
    ProgressiveSchedule,
    StageProblem,
    StepTable,
    cluster_questions,
    dataset_step_difficulties,
    get_solver,
    question_embeddings,
    rationale_nll,
    step_difficulty,
)
from .data import (
    CoTExample,
    KPODCollator,
    KPODSeq2SeqCollator,
    TokenizedExample,
    answers_match,
    extract_answer,
    load_builtin,
    read_jsonl,
    to_record,
    tokenize_example,
    tokenize_examples,
    write_jsonl,
)
from .errors import KPODInputError
from .losses import (
    KeypointCrossEntropy,
    KeypointLinearCrossEntropy,
    keypoint_cross_entropy,
    keypoint_cross_entropy_reference,
    keypoint_linear_cross_entropy,
    keypoint_linear_cross_entropy_reference,
)
from .steps import split_answer, split_steps
from .weighting import (
    AnswerPredictor,
    MaskLearner,
    MaskLearnerConfig,
    TokenWeighter,
    load_token_weights,
    render_html,
    render_png,
    renormalize_mean_one,
    save_token_weights,
    weight_stats,
)

__version__ = "0.1.0"  # the only version string: pyproject.toml reads it (dynamic version)

__all__ = [
    "AnswerPredictor",
    "MaskLearner",
    "MaskLearnerConfig",
    "TokenWeighter",
    "load_token_weights",
    "render_html",
    "render_png",
    "renormalize_mean_one",
    "save_token_weights",
    "weight_stats",
    "SOLVERS",
    "CoTExample",
    "DifficultyBudget",
    "KPODCollator",
    "KPODInputError",
    "KPODSeq2SeqCollator",
    "KeypointCrossEntropy",
    "KeypointLinearCrossEntropy",
    "ProgressiveSchedule",
    "StageProblem",
    "StepTable",
    "TokenizedExample",
    "answers_match",
    "cluster_questions",
    "dataset_step_difficulties",
    "extract_answer",
    "fused_available",
    "get_solver",
    "keypoint_cross_entropy",
    "keypoint_cross_entropy_reference",
    "keypoint_linear_cross_entropy",
    "keypoint_linear_cross_entropy_reference",
    "load_builtin",
    "question_embeddings",
    "rationale_nll",
    "read_jsonl",
    "split_answer",
    "split_steps",
    "step_difficulty",
    "to_record",
    "tokenize_example",
    "tokenize_examples",
    "write_jsonl",
]
