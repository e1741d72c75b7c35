"""The progressive curriculum of KPOD: step difficulty, budget, value function, solvers and the schedule.

Pure NumPy except where it touches a model (``scoring``, ``embeddings``). Typical use::

    d = dataset_step_difficulties(student, examples, token_weights)       # {id: d_k}
    labels = cluster_questions(question_embeddings(examples, student))    # K = 5
    schedule = ProgressiveSchedule.build(d, labels, n_epochs=20)
    for epoch in range(1, 21):
        c = schedule.given_steps(epoch)                                   # {id: given steps}
"""

from .budget import DifficultyBudget
from .clusters import cluster_questions
from .difficulty import NORMALISATIONS, normalise_step_weights, remaining_difficulty, step_difficulty, total_difficulty
from .embeddings import mean_input_embeddings, question_embeddings
from .schedule import ProgressiveSchedule
from .scoring import combine_step_difficulties, dataset_step_difficulties, rationale_nll
from .solvers import DEFAULT_SOLVER, FTGP, SOLVERS, BruteForce, DensityGreedy, GreedyMax, MarginalGreedy, Solver, get_solver
from .table import StepTable
from .value import StageProblem

__all__ = [
    "DEFAULT_SOLVER",
    "FTGP",
    "NORMALISATIONS",
    "SOLVERS",
    "BruteForce",
    "DensityGreedy",
    "DifficultyBudget",
    "GreedyMax",
    "MarginalGreedy",
    "ProgressiveSchedule",
    "Solver",
    "StageProblem",
    "StepTable",
    "cluster_questions",
    "combine_step_difficulties",
    "dataset_step_difficulties",
    "get_solver",
    "mean_input_embeddings",
    "normalise_step_weights",
    "question_embeddings",
    "rationale_nll",
    "remaining_difficulty",
    "step_difficulty",
    "total_difficulty",
]
