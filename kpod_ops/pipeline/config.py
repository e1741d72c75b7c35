"""The configuration of a distillation run: presets, methods, config files and stage hashes.

A run's configuration is one nested dict of plain values (sections ``data``, ``student``,
``warmup``, ``weights``, ``curriculum``, ``train``, ``eval``), so it can be written to JSON,
hashed per stage and overridden by a YAML/JSON file with the same keys.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

from ..errors import KPODInputError, bad_input

METHODS = ("kpod", "standard", "no-weights", "no-sig-dif", "no-progressive", "no-diversity", "paper")
PRESETS = ("quick", "smollm2-gsm")

# What each method changes (the paper's Table 2): token weights in the loss, the per-step weight
# normalisation of the difficulty, whether the curriculum moves, the diversity weight.
_METHOD_SETTINGS: dict[str, dict[str, Any]] = {
    "kpod": {"loss_weights": True, "curriculum": True, "normalisation": None, "progressive": True, "beta": None},
    "standard": {"loss_weights": False, "curriculum": False, "normalisation": None, "progressive": False, "beta": None},
    "no-weights": {"loss_weights": False, "curriculum": True, "normalisation": None, "progressive": True, "beta": None},
    "no-sig-dif": {"loss_weights": True, "curriculum": True, "normalisation": "uniform", "progressive": True, "beta": None},
    "no-progressive": {"loss_weights": True, "curriculum": False, "normalisation": None, "progressive": False, "beta": None},
    "no-diversity": {"loss_weights": True, "curriculum": True, "normalisation": None, "progressive": True, "beta": 0.0},
    "paper": {"loss_weights": True, "curriculum": True, "normalisation": None, "progressive": True, "beta": None},
}

# Settings a method fixes whatever the preset says: ``paper`` is KPOD with the paper's own token
# weights (no floor) and curriculum start (C0 = 30 % of the total difficulty B).
_METHOD_CONFIG: dict[str, dict[str, Any]] = {
    "paper": {"weights": {"floor": 0.0}, "curriculum": {"c0_ratio": 0.3}},
}

_QUICK: dict[str, Any] = {
    "data": {
        "source": "arith-cot",  # a built-in name or a JSONL path
        "n_train": 2000,
        "n_val": 200,
        "n_test": 1000,
        "test_percent": 20,  # --data files: share of questions (by hash) in the test split
        "val_percent": 10,  # --data files: share of the rest in the validation split
        "max_length": 320,
        "step_rule": "auto",
        "max_steps": 3,  # arith-cot only: an easier variant (2..3 steps, at most 1 distractor) for the tiny student
        "max_distractors": 1,
    },
    "student": {"kind": "tiny", "path": None, "hidden_size": 64, "num_layers": 3, "num_heads": 4, "lora_r": 0, "lora_alpha": 16},
    "warmup": {"enabled": True, "corpus": "arith-text", "n_texts": 3000, "epochs": 6, "batch_size": 32, "lr": 5e-3, "max_length": 128},
    "weights": {
        "n_examples": 1000,  # mask learner training examples (a subset of train; val from the validation split)
        "renormalize": True,  # loss weights scaled to mean 1 per rationale (see docs/method.md)
        # loss weight = floor + (1 - floor) * w on the learned w in [0, 1], then renormalised: a keypoint
        # (w = 1) weighs 1 / floor = 2 times a token the learner masks (w = 0) on every seed; the words
        # of a rationale keep half their loss, so a student still learning to write keeps learning them
        "floor": 0.5,
        # a tiny predictor learns to read the rationale in a fixed warm-up on nearly unmasked full rationales
        # (init keep 0.95; on partial ones the answer is out of view and it learns to ignore them), then is
        # held fixed while the weights learn (trained on, it unlearns reading)
        "learner": {
            "alpha": 0.1,
            "epochs": 6,
            "batch_size": 16,
            "init_keep_logit": 3.0,
            "predictor_warmup": 0.5,
            "reading_gain": None,
            "patience": 2,
            "warmup_rows": "full",
            "train_predictor_after_warmup": False,
        },
    },
    # c0_ratio: the curriculum starts with 80 % of the rationale difficulty exposed (the paper: 30 %;
    # `--method paper` runs that), so at equal optimiser steps kpod trains about as many rationale tokens as standard
    "curriculum": {"n_clusters": 5, "beta": 12.0, "p": 0.5, "c0_ratio": 0.8, "normalisation": "softmax", "solver": "ftgp"},
    "train": {
        "epochs": 36,  # long enough that every seed ends on the plateau of the loss, not on its steep part
        "batch_size": 16,  # sequences per optimiser step (global batch)
        "micro_batch_size": 16,  # sequences per forward pass; batch_size / micro_batch_size = accumulation steps
        "lr": 5e-3,
        "warmup_ratio": 0.05,
        "weight_decay": 0.1,  # with it every seed's loss drops early and ends on the same plateau
        "grad_clip": 1.0,
        "normaliser": "sequence",  # "sequence": sum / sequences in the global batch; "token": sum / active tokens
        "checkpoint_every": 50,  # optimiser steps between checkpoints (and one at every epoch end)
        # "auto": the loss from the hidden states without [B, T, V] logits wherever the student is supported
        # (Llama-style); true: required (an unsupported student is an error); false: from the logits
        "fused_linear": "auto",
        "min_lr_ratio": 0.0,  # the cosine learning-rate schedule ends at min_lr_ratio × lr
        "average_last": 0.2,  # the trained model: the mean of the weights after each of the last 20 % of steps (0: the last)
    },
    "eval": {"max_new_tokens": 120, "batch_size": 125},
    "precision": "fp32",
    "allow_degenerate": False,
}

_SMOLLM2: dict[str, Any] = copy.deepcopy(_QUICK)
_SMOLLM2["data"].update({"source": "gsm-symbolic", "n_train": 2000, "n_val": 200, "n_test": 1000, "max_length": 512,
                         "max_steps": None, "max_distractors": None})
_SMOLLM2["student"].update({"kind": "smollm2", "lora_r": 16, "lora_alpha": 32})
_SMOLLM2["warmup"].update({"enabled": False})
# A pre-trained student already writes its rationales' words: the paper's weights as they are (floor 0)
# and the paper's curriculum start (C0 = 30 % of B); the mask learner's defaults for a LoRA predictor.
_SMOLLM2["weights"].update({"n_examples": 500, "floor": 0.0})
_SMOLLM2["weights"]["learner"] = {"predictor_training": "lora", "batch_size": 8, "epochs": 3}
_SMOLLM2["curriculum"].update({"c0_ratio": 0.3})
# its training recipe as run before the quick preset's study recipe (not yet re-run on a GPU with that one)
_SMOLLM2["train"].update({"epochs": 4, "batch_size": 16, "micro_batch_size": 8, "lr": 2e-4, "checkpoint_every": 25,
                          "weight_decay": 0.0, "min_lr_ratio": 0.1, "average_last": 0.0})
_SMOLLM2["eval"].update({"max_new_tokens": 256, "batch_size": 32})

_PRESETS = {"quick": _QUICK, "smollm2-gsm": _SMOLLM2}

# Which sections each stage depends on (its hash covers them plus the hashes of earlier stages).
STAGE_SECTIONS = {
    "data": ("data",),
    "warmup": ("student", "warmup", "precision"),
    "weights": ("weights.n_examples", "weights.learner", "allow_degenerate"),
    "difficulty": ("curriculum.normalisation",),
    "clusters": ("curriculum.n_clusters",),
    "schedule": ("curriculum", "train.epochs"),
    "train": ("train", "precision", "weights.renormalize", "weights.floor"),
    "eval": ("eval",),
}


def preset_config(preset: str) -> dict[str, Any]:
    """A fresh copy of a preset's configuration (method ``kpod``, seed 0)."""
    if preset not in _PRESETS:
        raise bad_input("--preset", f"one of {PRESETS}", repr(preset))
    config = copy.deepcopy(_PRESETS[preset])
    config.update({"preset": preset, "method": "kpod", "seed": 0})
    return config


def method_settings(method: str) -> dict[str, Any]:
    """What ``method`` changes: loss weights, curriculum, difficulty normalisation, β."""
    if method not in _METHOD_SETTINGS:
        raise bad_input("--method", f"one of {METHODS}", repr(method))
    return dict(_METHOD_SETTINGS[method])


def resolve_method(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with the settings its method fixes applied (only ``paper`` has any)."""
    return merge(config, _METHOD_CONFIG.get(config["method"], {}), where=f"--method {config['method']}")


def merge(config: dict[str, Any], overrides: dict[str, Any], where: str = "config") -> dict[str, Any]:
    """``config`` with ``overrides`` applied key by key; an unknown key is an error naming it.

    ``weights.learner`` takes any ``MaskLearnerConfig`` field (checked when the learner is built).
    """
    if not isinstance(overrides, dict):
        raise KPODInputError(f"{where}: expected a mapping, got {type(overrides).__name__}")
    out = copy.deepcopy(config)
    for key, value in overrides.items():
        if key not in out and not where.endswith("weights.learner"):
            raise KPODInputError(f"{where}: unknown key {key!r}; expected one of {sorted(out)}")
        if isinstance(out.get(key), dict):
            out[key] = merge(out[key], value, f"{where}.{key}")
        else:
            out[key] = value
    return out


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Overrides from a YAML (``.yaml``/``.yml``) or JSON file: a mapping of sections to values."""
    file = Path(path)
    if not file.is_file():
        raise bad_input("--config", "an existing YAML or JSON file", str(file))
    text = file.read_text(encoding="utf-8")
    try:
        if file.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # yaml.YAMLError / json.JSONDecodeError: report both the same way
        raise KPODInputError(f"--config {file}: expected valid {'YAML' if file.suffix in ('.yaml', '.yml') else 'JSON'}, got {exc}") from None
    if not isinstance(data, dict):
        raise KPODInputError(f"--config {file}: expected a mapping of sections, got {type(data).__name__}")
    return data


def _section(config: dict[str, Any], dotted: str) -> Any:
    value: Any = config
    for part in dotted.split("."):
        value = value[part]
    return value


def stage_hash(config: dict[str, Any], stage: str, upstream: tuple[str, ...] = ()) -> str:
    """SHA-256 (16 hex digits) of what ``stage`` depends on: its sections, the seed and ``upstream`` hashes."""
    payload = {s: _section(config, s) for s in STAGE_SECTIONS[stage]}
    payload["seed"] = config.get("seed") if stage not in ("data",) else None
    payload["upstream"] = list(upstream)
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def check_floor(floor: object) -> None:
    """``weights.floor`` is a number in [0, 1): the share of its loss every token keeps."""
    if isinstance(floor, bool) or not isinstance(floor, (int, float)) or not 0 <= floor < 1:
        raise bad_input("weights.floor", "a number in [0, 1)", repr(floor))


def validate(config: dict[str, Any]) -> dict[str, Any]:
    """Check the values a user is most likely to get wrong; return ``config``."""
    method_settings(config["method"])
    if config["precision"] not in ("fp32", "bf16"):
        raise bad_input("precision", "'fp32' or 'bf16'", repr(config["precision"]))
    t = config["train"]
    for key in ("epochs", "batch_size", "micro_batch_size", "checkpoint_every"):
        if isinstance(t[key], bool) or not isinstance(t[key], int) or t[key] < 1:
            raise bad_input(f"train.{key}", "a positive int", repr(t[key]))
    if t["batch_size"] % t["micro_batch_size"]:
        raise bad_input("train.batch_size", f"a multiple of train.micro_batch_size={t['micro_batch_size']}", t["batch_size"])
    for key in ("min_lr_ratio", "average_last"):
        if isinstance(t[key], bool) or not isinstance(t[key], (int, float)) or not 0 <= t[key] < 1:
            raise bad_input(f"train.{key}", "a number in [0, 1)", repr(t[key]))
    check_floor(config["weights"]["floor"])
    if t["normaliser"] not in ("sequence", "token"):
        raise bad_input("train.normaliser", "'sequence' or 'token'", repr(t["normaliser"]))
    if t["fused_linear"] not in ("auto", True, False):
        raise bad_input("train.fused_linear", "'auto', true or false", repr(t["fused_linear"]))
    if config["student"]["kind"] not in ("tiny", "smollm2", "dir"):
        raise bad_input("student.kind", "'tiny', 'smollm2' or 'dir'", repr(config["student"]["kind"]))
    seed = config["seed"]
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise bad_input("--seed", "an int >= 0", repr(seed))
    return config
