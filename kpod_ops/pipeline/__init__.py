"""The end-to-end KPOD distillation job, stage by stage or all at once.

Stages (plain objects in and out; each writes its artefacts when given a folder through
:func:`distill`): :func:`warm_up`, :func:`learn_weights`, :func:`score_difficulties`,
:func:`cluster`, :func:`build_schedule`, :func:`train`, :func:`evaluate`; :func:`distill` runs them
all with per-stage configuration hashes and writes ``report.json`` / ``report.md``;
:func:`compare` runs several methods over paired seeds.
"""

from .compare import compare
from .config import METHODS, PRESETS, DistillConfig, load_config_file, merge, method_settings, preset_config
from .curriculum import build_schedule, cluster, score_difficulties
from .evaluate import EvalResult, evaluate, generate, prompt_ids
from .run import distill
from .train import TrainResult, TrainSettings, train
from .warmup import warm_up
from .weights import DegenerateWeightsError, LearnedWeights, learn_weights, learner_config

__all__ = [
    "METHODS",
    "PRESETS",
    "DistillConfig",
    "DegenerateWeightsError",
    "EvalResult",
    "LearnedWeights",
    "TrainResult",
    "TrainSettings",
    "build_schedule",
    "cluster",
    "compare",
    "distill",
    "evaluate",
    "generate",
    "learn_weights",
    "learner_config",
    "load_config_file",
    "merge",
    "method_settings",
    "preset_config",
    "prompt_ids",
    "score_difficulties",
    "train",
    "warm_up",
]
