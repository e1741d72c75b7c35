"""The configuration of a distillation run: typed sections, presets, methods, config files and stage hashes.

A run's configuration is a :class:`DistillConfig`: frozen dataclasses, one per section (``data``,
``student``, ``warmup``, ``weights``, ``curriculum``, ``train``, ``eval``), each value checked when
the object is built, so a wrong key or value fails before any stage runs, with a message naming
the key, what it expects and what came. :meth:`DistillConfig.to_dict` is its serialised form: the
``config`` of ``report.json`` and what the stage hashes cover. A YAML/JSON file of overrides has
the same nested keys (:func:`load_config_file`, :func:`merge`).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar

from ..curriculum.difficulty import NORMALISATIONS
from ..curriculum.solvers import SOLVERS
from ..data.arith import WORDINGS
from ..errors import KPODInputError, bad_input
from ..steps import RULES
from ..weighting.config import MaskLearnerConfig

METHODS = ("kpod", "standard", "no-weights", "no-sig-dif", "no-progressive", "no-diversity", "paper")
PRESETS = ("quick", "smoke", "smollm2-gsm")

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

# Keys a config file cannot set: the command line does (a file's value would be overridden or mislabel the run).
_COMMAND_LINE_KEYS = {"preset": "--preset", "method": "--method (--methods for compare)", "seed": "--seed (--seeds for compare)"}


# ----------------------------------------------------------------------------- value checks
@dataclass(frozen=True)
class _Check:
    """What a key accepts: ``expected`` (said in errors and in the reference) and the test."""

    expected: str
    ok: Callable[[Any], bool]


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _text(option: Any) -> str:
    """An option as a config file writes it."""
    return {True: "true", False: "false", None: "null"}[option] if option is None or isinstance(option, bool) else repr(option)


def _int(low: int, *, null: str | None = None) -> _Check:
    return _Check(f"an int >= {low}" + (f" or null ({null})" if null else ""),
                  lambda v: (null is not None and v is None) or (_is_int(v) and v >= low))


def _number(expected: str, ok: Callable[[float], bool], *, null: str | None = None) -> _Check:
    return _Check(expected + (f" or null ({null})" if null else ""),
                  lambda v: (null is not None and v is None) or (_is_number(v) and ok(v)))


def _one_of(*options: Any) -> _Check:
    words = [_text(o) for o in options]
    expected = words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]
    return _Check(expected, lambda v: any(type(v) is type(o) and v == o for o in options))


_BOOL = _one_of(True, False)
_POSITIVE = _number("a number > 0", lambda v: v > 0)
_NON_NEGATIVE = _number("a number >= 0", lambda v: v >= 0)
_FRACTION = _number("a number in [0, 1)", lambda v: 0 <= v < 1)


def _key(doc: str, check: _Check, **kw: Any) -> Any:
    """A configuration key: its meaning (``doc``, for the reference) and what it accepts."""
    return field(metadata={"doc": doc, "check": check}, **kw)


def _did_you_mean(key: str, options: list[str]) -> str:
    close = difflib.get_close_matches(key, options, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _unknown(where: str, key: Any, options: list[str]) -> KPODInputError:
    return KPODInputError(f"{where}: unknown key {key!r}{_did_you_mean(str(key), options)}; expected one of {options}")


# ----------------------------------------------------------------------------- sections
class _Section:
    """A frozen section: every key checked on construction; ``to_dict``/``from_dict`` as written to JSON."""

    KEY: ClassVar[str]
    OPTIONAL: ClassVar[tuple[str, ...]] = ()  # keys written only when they differ from their default

    def __post_init__(self) -> None:
        for f in fields(self):  # type: ignore[arg-type]
            check, value = f.metadata["check"], getattr(self, f.name)
            if not check.ok(value):
                raise bad_input(f"{self.KEY}.{f.name}", check.expected, repr(value))
        self._check_together()

    def _check_together(self) -> None:
        """Checks between keys of the section."""

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if f.name in self.OPTIONAL and value == f.default:
                continue
            out[f.name] = dict(value) if isinstance(value, Mapping) else value
        return out

    @classmethod
    def from_dict(cls, data: Any) -> Any:
        names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
        if not isinstance(data, Mapping):
            raise bad_input(cls.KEY, f"a mapping of {names}", type(data).__name__)
        for key in data:
            if key not in names:
                raise _unknown(cls.KEY, key, names)
        missing = [n for n in names if n not in data and n not in cls.OPTIONAL]
        if missing:
            raise bad_input(cls.KEY, f"every key of the section, {missing} missing", sorted(data))
        return cls(**data)


@dataclass(frozen=True, kw_only=True)
class DataConfig(_Section):
    """``data``: where the examples come from and how they are split and cut."""

    KEY: ClassVar[str] = "data"
    OPTIONAL: ClassVar[tuple[str, ...]] = ("filter_wrong_answers", "strip_calculator", "wording")

    source: str = _key("a built-in data set name (`arith-cot`, `gsm-symbolic`, ...) or a JSONL file (`--data`)",
                       _Check("a built-in name or a JSONL path", lambda v: isinstance(v, str) and v != ""))
    n_train: int = _key("training examples (at most)", _int(1))
    n_val: int = _key("validation examples (at most)", _int(0))
    n_test: int = _key("test examples (at most)", _int(1))
    test_percent: int | float = _key("a `--data` file: share (%) of the questions, by hash, in the test split",
                                     _number("a number in (0, 100)", lambda v: 0 < v < 100))
    val_percent: int | float = _key("a `--data` file: share (%) of the rest in the validation split",
                                    _number("a number in [0, 100)", lambda v: 0 <= v < 100))
    max_length: int = _key("tokens per training example; longer ones are left out (and counted)", _int(2))
    step_rule: str = _key("how a rationale is split into steps (`auto` picks per rationale)", _one_of(*RULES))
    max_steps: int | None = _key("`arith-cot` only: at most this many steps (an easier variant)", _int(2, null="any"))
    max_distractors: int | None = _key("`arith-cot` only: at most this many distractor numbers", _int(0, null="any"))
    wording: str = _key("`arith-cot` only: `plain`, or `varied` (each operation set at a place and time the rationale "
                        "restates: keypoints a minority of the tokens; written to the configuration only when not plain)",
                        _one_of(*WORDINGS), default="plain")
    filter_wrong_answers: bool = _key("leave out examples whose rationale reaches another answer than their `answer` "
                                      "(`--filter-wrong-answers`; written to the configuration only when true)", _BOOL,
                                      default=False)
    strip_calculator: bool = _key("remove GSM8K's `<<48/2=24>>` calculator annotations from the rationales "
                                  "(`--strip-calculator`; written to the configuration only when true)", _BOOL, default=False)


@dataclass(frozen=True, kw_only=True)
class StudentConfig(_Section):
    """``student``: the model distilled into."""

    KEY: ClassVar[str] = "student"

    kind: str = _key("`tiny` (built in code), `smollm2` (SmolLM2-135M) or `dir` (a Hugging Face folder, `--student`)",
                     _one_of("tiny", "smollm2", "dir"))
    path: str | None = _key("the model folder of `kind: dir`", _Check("a folder path or null", lambda v: v is None or isinstance(v, str)))
    hidden_size: int = _key("`tiny`: hidden units", _int(1))
    num_layers: int = _key("`tiny`: transformer layers", _int(1))
    num_heads: int = _key("`tiny`: attention heads (dividing `hidden_size`)", _int(1))
    lora_r: int = _key("LoRA rank of the trained adapters (0: every weight is trained)", _int(0))
    lora_alpha: int | float = _key("LoRA scaling numerator", _POSITIVE)

    def _check_together(self) -> None:
        if self.kind == "dir" and self.path is None:
            raise bad_input("student.path", "the model folder for student.kind 'dir' (--student DIR)", "null")


@dataclass(frozen=True, kw_only=True)
class WarmupConfig(_Section):
    """``warmup``: language-model pre-training of the tiny student before anything else."""

    KEY: ClassVar[str] = "warmup"

    enabled: bool = _key("pre-train the student on `corpus` first (off for a pre-trained student)", _BOOL)
    corpus: str = _key("the warm-up texts", _one_of("arith-text"))
    n_texts: int = _key("warm-up texts", _int(1))
    epochs: int = _key("warm-up epochs", _int(1))
    batch_size: int = _key("warm-up sequences per step", _int(1))
    lr: int | float = _key("warm-up learning rate", _POSITIVE)
    max_length: int = _key("tokens per packed warm-up block", _int(2))


def _learner_fields() -> list[str]:
    return [f.name for f in fields(MaskLearnerConfig) if f.name != "seed"]


def _is_mapping(v: Any) -> bool:
    return isinstance(v, Mapping)


@dataclass(frozen=True, kw_only=True)
class WeightsConfig(_Section):
    """``weights``: the mask learner's token weights and how they enter the loss."""

    KEY: ClassVar[str] = "weights"
    OPTIONAL: ClassVar[tuple[str, ...]] = ("restarts",)

    n_examples: int = _key("mask-learner training examples (the first of the training split)", _int(1))
    renormalize: bool = _key("loss weights scaled to mean 1 per rationale (see docs/method.md)", _BOOL)
    floor: int | float = _key("loss weight `floor + (1 - floor)·w` on the learned `w` in [0, 1]: a keypoint weighs "
                              "`1/floor` times a masked token (0: the paper's weights)", _FRACTION)
    learner: Mapping[str, Any] = _key("`MaskLearnerConfig` settings that differ from its defaults (every one of its fields "
                                      "but `seed`, which is `--seed`; see [the mask learner](mask-learner.md))",
                                      _Check("a mapping of MaskLearnerConfig fields", _is_mapping))
    restarts: int = _key("mask learners trained, each from its own seed (the first from `--seed`); the one with the lowest "
                         "validation objective is kept, every one is reported (written to the configuration only when not 1). "
                         "The objective does not tell which learner found the keypoints: on the quick preset five restarts "
                         "kept one that did on fewer data seeds than one learner ([results](results.md))",
                         _int(1), default=1)

    def _check_together(self) -> None:
        names = _learner_fields()
        for key in self.learner:
            if key == "seed":
                raise bad_input("weights.learner.seed", "no value here (the run's --seed seeds the mask learner)", self.learner[key])
            if key not in names:
                raise _unknown("weights.learner", key, names)
        try:
            MaskLearnerConfig(**self.learner)
        except KPODInputError as exc:
            raise KPODInputError(f"weights.learner.{exc}") from None
        object.__setattr__(self, "learner", MappingProxyType(dict(self.learner)))  # read-only, like the rest

    def __getstate__(self) -> dict[str, Any]:  # a mapping proxy does not pickle (compare sends configs to workers)
        return {**self.__dict__, "learner": dict(self.learner)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            object.__setattr__(self, key, MappingProxyType(value) if key == "learner" else value)


@dataclass(frozen=True, kw_only=True)
class CurriculumConfig(_Section):
    """``curriculum``: step difficulties, question clusters and the progressive schedule."""

    KEY: ClassVar[str] = "curriculum"

    n_clusters: int = _key("k-means clusters of the questions (K)", _int(1))
    beta: int | float = _key("diversity weight β of the schedule (the `no-diversity` method sets 0)", _NON_NEGATIVE)
    p: int | float = _key("budget exponent: D(t) = C0 + (B − C0)(t/T)^(p+1)", _NON_NEGATIVE)
    c0_ratio: int | float = _key("the difficulty exposed at the start, C0, as a share of the total B",
                                 _number("a number in [0, 1]", lambda v: 0 <= v <= 1))
    normalisation: str = _key("per-step weight normalisation of the difficulty (Eq. 8; the `no-sig-dif` method sets "
                              "`uniform`)", _one_of(*NORMALISATIONS))
    solver: str = _key("the solver that picks each stage's questions (see [the curriculum](curriculum.md))", _one_of(*SOLVERS))


@dataclass(frozen=True, kw_only=True)
class TrainConfig(_Section):
    """``train``: distillation training of the student."""

    KEY: ClassVar[str] = "train"

    epochs: int = _key("training epochs", _int(1))
    batch_size: int = _key("sequences per optimiser step (the global batch, across processes)", _int(1))
    micro_batch_size: int = _key("sequences per forward pass; `batch_size / micro_batch_size` accumulation steps", _int(1))
    lr: int | float = _key("peak learning rate (AdamW)", _POSITIVE)
    warmup_ratio: int | float = _key("share of the steps with a linear learning-rate warm-up", _FRACTION)
    weight_decay: int | float = _key("AdamW weight decay", _NON_NEGATIVE)
    grad_clip: int | float | None = _key("gradient-norm clipping", _number("a number > 0", lambda v: v > 0, null="no clipping"))
    normaliser: str = _key("`sequence`: the loss sum ÷ sequences in the global batch; `token`: ÷ active tokens",
                           _one_of("sequence", "token"))
    checkpoint_every: int = _key("optimiser steps between checkpoints (and one at every epoch end)", _int(1))
    fused_linear: bool | str = _key("the loss from the hidden states without `[B, T, V]` logits: `auto` wherever the "
                                    "student is supported (Llama-style), `true` required, `false` from the logits",
                                    _one_of("auto", True, False))
    min_lr_ratio: int | float = _key("the cosine learning-rate schedule ends at `min_lr_ratio × lr`", _FRACTION)
    average_last: int | float = _key("the trained model is the mean of the weights after each of this last share of "
                                     "the steps (0: the last weights)", _FRACTION)

    def _check_together(self) -> None:
        if self.batch_size % self.micro_batch_size:
            raise bad_input("train.batch_size", f"a multiple of train.micro_batch_size={self.micro_batch_size}", self.batch_size)


@dataclass(frozen=True, kw_only=True)
class EvalConfig(_Section):
    """``eval``: greedy generation on the test (and validation) split."""

    KEY: ClassVar[str] = "eval"

    max_new_tokens: int = _key("tokens generated per question at most", _int(1))
    batch_size: int = _key("questions generated side by side", _int(1))


_SECTIONS: dict[str, type[_Section]] = {
    "data": DataConfig, "student": StudentConfig, "warmup": WarmupConfig, "weights": WeightsConfig,
    "curriculum": CurriculumConfig, "train": TrainConfig, "eval": EvalConfig,
}


@dataclass(frozen=True, kw_only=True)
class DistillConfig:
    """Everything a ``kpod distill`` run depends on: the sections and the run's own settings.

    Built by :func:`preset_config` and changed with :func:`merge` (a nested mapping of overrides, as
    a ``--config`` file holds) or :func:`dataclasses.replace`; every value is checked on construction.
    """

    data: DataConfig
    student: StudentConfig
    warmup: WarmupConfig
    weights: WeightsConfig
    curriculum: CurriculumConfig
    train: TrainConfig
    eval: EvalConfig
    precision: str = _key("training and evaluation precision (`--precision`)", _one_of("fp32", "bf16"))
    allow_degenerate: bool = _key("train with degenerate token weights instead of stopping (`--allow-degenerate`)", _BOOL)
    preset: str = _key("the preset the run started from (`--preset`)", _one_of(*PRESETS))
    method: str = _key("KPOD or an ablation (`--method`)", _one_of(*METHODS))
    seed: int = _key("initialisation and data order, never the test split (`--seed`)", _int(0))

    def __post_init__(self) -> None:
        for name, cls in _SECTIONS.items():
            if not isinstance(getattr(self, name), cls):
                raise bad_input(name, f"a {cls.__name__}", type(getattr(self, name)).__name__)
        for f in fields(self):
            if f.name not in _SECTIONS:
                check, value = f.metadata["check"], getattr(self, f.name)
                if not check.ok(value):
                    raise bad_input(f.name, check.expected, repr(value))

    def to_dict(self) -> dict[str, Any]:
        """The serialised configuration: ``report.json``'s ``config``, and what stage hashes cover."""
        return {f.name: getattr(self, f.name).to_dict() if f.name in _SECTIONS else getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Any, where: str | None = None) -> DistillConfig:
        """A checked configuration from its serialised form (every key present; e.g. ``report.json``'s ``config``)."""
        try:
            return _from_dict(data)
        except KPODInputError as exc:
            raise (KPODInputError(f"{where}: {exc}") if where else exc) from None


def _from_dict(data: Any) -> DistillConfig:
    names = [f.name for f in fields(DistillConfig)]
    if not isinstance(data, Mapping):
        raise bad_input("config", f"a mapping of {names}", type(data).__name__)
    for key in data:
        if key not in names:
            raise _unknown("config", key, names)
    missing = [n for n in names if n not in data]
    if missing:
        raise bad_input("config", f"every key, {missing} missing", sorted(data))
    return DistillConfig(**{k: _SECTIONS[k].from_dict(v) if k in _SECTIONS else v for k, v in data.items()})


# ----------------------------------------------------------------------------- presets
_QUICK = DistillConfig(
    data=DataConfig(source="arith-cot", n_train=2000, n_val=200, n_test=1000, test_percent=20, val_percent=10, max_length=320,
                    step_rule="auto", max_steps=3, max_distractors=1),  # an easier arith-cot (2..3 steps) for the tiny student
    student=StudentConfig(kind="tiny", path=None, hidden_size=64, num_layers=3, num_heads=4, lora_r=0, lora_alpha=16),
    warmup=WarmupConfig(enabled=True, corpus="arith-text", n_texts=3000, epochs=6, batch_size=32, lr=5e-3, max_length=128),
    # a keypoint (w = 1) weighs 1 / floor = 2 times a masked token: the words keep half their loss while the tiny student
    # still learns to write them; the predictor warms up on full rationales (on partial ones the answer is out of view),
    # then is held fixed while the weights learn (trained on, it unlearns reading)
    weights=WeightsConfig(n_examples=1000, renormalize=True, floor=0.5, learner={
        "alpha": 0.1, "epochs": 6, "batch_size": 16, "init_keep_logit": 3.0, "predictor_warmup": 0.5, "reading_gain": None,
        "patience": 2, "warmup_rows": "full", "train_predictor_after_warmup": False}),
    # c0_ratio 0.8 (the paper: 0.3, `--method paper`): at equal steps kpod trains about as many rationale tokens as standard
    curriculum=CurriculumConfig(n_clusters=5, beta=12.0, p=0.5, c0_ratio=0.8, normalisation="softmax", solver="ftgp"),
    # 36 epochs: every seed ends on the plateau of the loss; weight decay 0.1: every seed's loss drops early
    train=TrainConfig(epochs=36, batch_size=16, micro_batch_size=16, lr=5e-3, warmup_ratio=0.05, weight_decay=0.1, grad_clip=1.0,
                      normaliser="sequence", checkpoint_every=50, fused_linear="auto", min_lr_ratio=0.0, average_last=0.2),
    eval=EvalConfig(max_new_tokens=120, batch_size=125),
    precision="fp32", allow_degenerate=False, preset="quick", method="kpod", seed=0,
)

# A pre-trained student already writes its rationales' words: the paper's weights as they are (floor 0) and curriculum
# start (C0 = 30 % of B), the mask learner's defaults for a LoRA predictor, and its own training recipe.
_SMOLLM2 = replace(
    _QUICK,
    data=replace(_QUICK.data, source="gsm-symbolic", max_length=512, max_steps=None, max_distractors=None),
    student=replace(_QUICK.student, kind="smollm2", lora_r=16, lora_alpha=32),
    warmup=replace(_QUICK.warmup, enabled=False),
    weights=replace(_QUICK.weights, n_examples=500, floor=0.0, learner={"predictor_training": "lora", "batch_size": 8, "epochs": 3}),
    curriculum=replace(_QUICK.curriculum, c0_ratio=0.3),
    train=replace(_QUICK.train, epochs=4, micro_batch_size=8, lr=2e-4, checkpoint_every=25, weight_decay=0.0, min_lr_ratio=0.1,
                  average_last=0.0),
    eval=EvalConfig(max_new_tokens=256, batch_size=32),
    preset="smollm2-gsm",
)

# A check that the install and a data file go through every stage, not a result: quick at a fifth of its size
# (about 40 s on one core); the student is far from trained, its test accuracy a few per cent.
_SMOKE = replace(
    _QUICK,
    data=replace(_QUICK.data, n_train=400, n_val=50, n_test=100),
    warmup=replace(_QUICK.warmup, n_texts=600, epochs=3),
    weights=replace(_QUICK.weights, n_examples=300, learner={**_QUICK.weights.learner, "epochs": 3}),
    train=replace(_QUICK.train, epochs=6, checkpoint_every=25),
    preset="smoke",
)

_PRESETS = {"quick": _QUICK, "smoke": _SMOKE, "smollm2-gsm": _SMOLLM2}

# Which sections each stage depends on (its hash covers them plus the hashes of earlier stages).
STAGE_SECTIONS = {
    "data": ("data",),
    "warmup": ("student", "warmup", "precision"),
    "weights": ("weights.n_examples", "weights.learner", "weights.restarts", "allow_degenerate"),
    "difficulty": ("curriculum.normalisation",),
    "clusters": ("curriculum.n_clusters",),
    "schedule": ("curriculum", "train.epochs"),
    "train": ("train", "precision", "weights.renormalize", "weights.floor"),
    "eval": ("eval",),
}


def preset_config(preset: str) -> DistillConfig:
    """A preset's configuration (method ``kpod``, seed 0)."""
    if preset not in _PRESETS:
        raise bad_input("--preset", f"one of {PRESETS}", repr(preset))
    return _PRESETS[preset]


def method_settings(method: str) -> dict[str, Any]:
    """What ``method`` changes: loss weights, curriculum, difficulty normalisation, β."""
    if method not in _METHOD_SETTINGS:
        raise bad_input("--method", f"one of {METHODS}", repr(method))
    return dict(_METHOD_SETTINGS[method])


def resolve_method(config: DistillConfig) -> DistillConfig:
    """``config`` with the settings its method fixes applied (only ``paper`` has any)."""
    return merge(config, _METHOD_CONFIG.get(config.method, {}), where=f"--method {config.method}")


def _names(path: str) -> list[str]:
    """The keys the mapping at ``path`` accepts (``config``, a section, or ``weights.learner``)."""
    if path == "config":
        return [f.name for f in fields(DistillConfig)]
    if path == "weights.learner":
        return [f.name for f in fields(MaskLearnerConfig)]  # seed too: WeightsConfig says where it comes from
    return [f.name for f in fields(_SECTIONS[path])]


def _apply(current: Mapping[str, Any], overrides: Any, path: str = "config") -> dict[str, Any]:
    """``current`` with ``overrides`` applied key by key (sections and ``weights.learner`` recursively)."""
    if not isinstance(overrides, Mapping):
        raise bad_input(path, "a mapping", type(overrides).__name__)
    out = dict(current)
    names = _names(path)
    for key, value in overrides.items():
        if key not in names:
            raise _unknown(path, key, names)
        inner = key if path == "config" else f"{path}.{key}"
        nested = (path == "config" and key in _SECTIONS) or inner == "weights.learner"
        out[key] = _apply(current[key], value, inner) if nested else value
    return out


def merge(config: DistillConfig, overrides: Mapping[str, Any], where: str | None = None) -> DistillConfig:
    """``config`` with ``overrides`` (a nested mapping, as a ``--config`` file holds) applied, then checked.

    An unknown key is an error naming the closest known one; a wrong value names its key, what it
    expects and what came, prefixed by ``where`` (e.g. the config file).
    """
    if not isinstance(config, DistillConfig):
        raise bad_input("config", "a DistillConfig (from preset_config)", type(config).__name__)
    try:
        return _from_dict(_apply(config.to_dict(), overrides))
    except KPODInputError as exc:
        raise (KPODInputError(f"{where}: {exc}") if where else exc) from None


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
    for key, flag in _COMMAND_LINE_KEYS.items():
        if key in data:
            raise KPODInputError(f"--config {file}: expected no {key!r} key (it is set on the command line: {flag}), got {data[key]!r}")
    return data


_ABSENT = object()


def _section(config: dict[str, Any], dotted: str) -> Any:
    """The value at ``dotted`` in the serialised ``config``; ``_ABSENT`` for an optional key left at its default."""
    value: Any = config
    for part in dotted.split("."):
        if part not in value:
            return _ABSENT
        value = value[part]
    return value


def stage_hash(config: DistillConfig, stage: str, upstream: tuple[str, ...] = ()) -> str:
    """SHA-256 (16 hex digits) of what ``stage`` depends on: its sections, the seed and ``upstream`` hashes."""
    plain = config.to_dict()
    # an optional key at its default is left out, so adding one keeps the hashes of the stages already run
    payload = {s: v for s in STAGE_SECTIONS[stage] if (v := _section(plain, s)) is not _ABSENT}
    payload["seed"] = plain["seed"] if stage != "data" else None
    payload["upstream"] = list(upstream)
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def check_floor(floor: object) -> None:
    """``weights.floor`` is a number in [0, 1): the share of its loss every token keeps."""
    if not _FRACTION.ok(floor):
        raise bad_input("weights.floor", _FRACTION.expected, repr(floor))


def config_reference() -> str:
    """The configuration keys as a Markdown table (key, accepted values, each preset's value, meaning): ``docs/cli.md``."""
    head = "| key | accepts | " + " | ".join(f"`{p}`" for p in PRESETS) + " | meaning |"
    lines = [head, "|---|---|" + "---|" * len(PRESETS) + "---|"]

    def row(key: str, f: Any, values: list[Any]) -> None:
        shown = " | ".join(f"`{json.dumps(dict(v) if isinstance(v, Mapping) else v)}`" for v in values)
        lines.append(f"| `{key}` | {f.metadata['check'].expected} | {shown} | {f.metadata['doc']} |")

    presets = [_PRESETS[p] for p in PRESETS]
    for f in fields(DistillConfig):
        if f.name in _SECTIONS:
            for g in fields(_SECTIONS[f.name]):
                row(f"{f.name}.{g.name}", g, [getattr(getattr(c, f.name), g.name) for c in presets])
        elif f.name not in _COMMAND_LINE_KEYS:
            row(f.name, f, [getattr(c, f.name) for c in presets])
    return "\n".join(lines)
