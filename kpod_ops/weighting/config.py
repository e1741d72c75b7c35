"""Hyper-parameters of the mask learner (model, objective and training), with the paper's defaults."""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass

from ..errors import bad_input
from .answer_loss import FUSED_LINEAR

_PREDICTOR_TRAINING = ("full", "lora", "frozen")
_MASK_LOSS = ("sampled", "expected")
_MASK_NORM = ("sum", "length")
_OBJECTIVE = ("normalized", "literal")
_MONITOR = ("objective", "answer_loss")
_PREFIX_MEAN = ("sampled", "all")
PREDICTOR_LR = 3e-3  # predictor_lr="auto" for a predictor trained fully (or frozen, for its projection / head)
LORA_PREDICTOR_LR = 1e-4  # predictor_lr="auto" for LoRA adapters on a pre-trained predictor


def _int(config: object, name: str, *, low: int) -> None:
    """An int (not a bool, not a float like 2.5) >= ``low``; NumPy integers become plain ints."""
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise bad_input(name, f"an int >= {low}", repr(value))
    setattr(config, name, int(value))


def _real(config: object, name: str, expected: str, ok) -> None:
    """A finite real number (not a bool) satisfying ``ok``; NumPy/torch scalars become floats."""
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or not ok(value):
        raise bad_input(name, expected, repr(value))
    if not isinstance(value, (int, float)):
        setattr(config, name, float(value))


@dataclass
class MaskLearnerConfig:
    """Everything that shapes the mask learner. The defaults learn; :meth:`literal` is the paper as written.

    Weight generator: one self-attention layer (``num_heads``, ``position``: learned relative
    offsets, rotary or none) and a two-layer MLP (``mlp_hidden``) on the student's frozen input
    embedding, starting at the pre-sigmoid weight ``init_keep_logit``.

    Mask: binary concrete with temperature ``tau`` annealed to ``tau_final`` (``None``: constant),
    soft samples unless ``hard`` (straight-through).

    Objective ``L_k = L_p + alpha * L_m`` over ``num_prefixes`` sampled prefix lengths per example.
    ``"normalized"`` (default) averages, so both terms are O(1) whatever the lengths and ``alpha``
    reads as "nats per answer token that keeping every token must buy"; ``"literal"`` is the paper's
    sums with its ``alpha = 0.5``. ``prefix_mean`` weighs the sampled prefixes alike (``"sampled"``)
    or estimates the mean over every prefix length (``"all"``). ``cap_at_blank`` caps each prefix's
    answer NLL at its value with the prefix masked, so a prefix that misleads a predictor which
    copies the last number it sees neither rewards nor punishes keeping tokens (``"auto"``: for a
    LoRA or frozen predictor, one held fixed after the warm-up, or ``predictor_lr=0``).
    ``mask_loss``: the sampled keep indicators (paper) or the keep probabilities. ``mask_embedding``: what a hidden
    token reads as, a vector learned with the weights (``"learned"``, starting at the mean input embedding) or that
    mean held fixed (``"fixed"``; with a predictor held fixed, a learned vector can be tuned to stand in for the
    hidden tokens, which lowers the reading gain and makes hiding them cheaper).

    Answer predictor: trained fully (``"full"``), through ``"lora"`` adapters, or ``"frozen"``;
    ``projection`` maps the student's embedding size to the predictor's; a copy is trained unless
    ``copy_predictor=False``; ``fused_linear`` computes its answer loss without logits where the
    predictor allows it (``"auto"`` says why not otherwise).
    ``train_predictor_after_warmup``: the predictor keeps learning with the weights (the paper) or
    is held fixed (``"auto"``: fixed for a LoRA predictor, which otherwise unlearns reading the
    rationale and takes the weights to 0 with it).

    Training: AdamW with ``lr`` for the weights and ``predictor_lr`` for the predictor (``"auto"``:
    3e-3, or 1e-4 for LoRA adapters; 0 keeps it fixed). Warm-up: the predictor learns alone for at
    most ``predictor_warmup`` of the steps, ending early once it reads the rationale (its answer NLL
    with the full rationale ``reading_gain`` nats below that with every token masked, on two probes
    in a row), on the objective's sampled prefixes or on full rationales (``warmup_rows``; a small
    predictor trained from scratch learns to read only from full ones). Batches of ``batch_size``,
    at most ``epochs`` epochs, early stopping after ``patience`` epochs without improvement of the
    validation ``monitor``; deterministic given ``seed``. The mask learner's page of the
    documentation explains each choice.
    """

    # weight generator
    num_heads: int | None = None
    mlp_hidden: int = 256
    position: str = "relative"
    init_keep_logit: float = 0.0
    # Gumbel mask
    tau: float = 1.0
    tau_final: float | None = 0.2
    hard: bool = False
    # objective
    objective: str = "normalized"
    alpha: float = 0.1
    num_prefixes: int = 4
    prefix_mean: str = "sampled"
    cap_at_blank: bool | str = "auto"
    mask_loss: str = "sampled"
    mask_norm: str | None = None
    mask_embedding: str = "learned"
    # answer predictor
    predictor_training: str = "full"
    projection: str = "auto"
    lora_r: int = 16
    lora_alpha: int = 32
    lora_targets: str | list[str] = "all-linear"
    copy_predictor: bool = True
    fused_linear: bool | str = "auto"
    # training
    lr: float = 1e-3
    predictor_lr: float | str | None = "auto"
    predictor_warmup: float = 0.5
    warmup_rows: str = "prefixes"
    train_predictor_after_warmup: bool | str = "auto"
    reading_gain: float | None = 0.1
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0
    batch_size: int = 8
    epochs: int = 5
    patience: int | None = 2
    monitor: str = "objective"
    seed: int = 0

    def __post_init__(self) -> None:
        for name, allowed in (
            ("predictor_training", _PREDICTOR_TRAINING),
            ("mask_loss", _MASK_LOSS),
            ("objective", _OBJECTIVE),
            ("monitor", _MONITOR),
            ("projection", ("auto", "linear", "identity")),
            ("position", ("relative", "rotary", "none")),
            ("prefix_mean", _PREFIX_MEAN),
            ("mask_embedding", ("learned", "fixed")),
        ):
            if getattr(self, name) not in allowed:
                raise bad_input(name, f"one of {allowed}", repr(getattr(self, name)))
        for name in ("mlp_hidden", "num_prefixes", "batch_size", "epochs", "lora_r"):
            _int(self, name, low=1)
        _int(self, "seed", low=0)
        if self.num_heads is not None:
            _int(self, "num_heads", low=1)
        if self.patience is not None:
            _int(self, "patience", low=1)
        for name in ("tau", "lr", "lora_alpha"):
            _real(self, name, "a finite number > 0", lambda v: v > 0)
        for name in ("alpha", "weight_decay"):
            _real(self, name, "a finite number >= 0", lambda v: v >= 0)
        _real(self, "init_keep_logit", "a finite number", lambda v: True)
        _real(self, "predictor_warmup", "a fraction in [0, 1)", lambda v: 0 <= v < 1)
        if self.warmup_rows not in ("prefixes", "full"):
            raise bad_input("warmup_rows", "'prefixes' or 'full'", repr(self.warmup_rows))
        if self.predictor_lr is not None and self.predictor_lr != "auto":
            _real(self, "predictor_lr", "a finite number >= 0, 'auto' or None (same as lr)", lambda v: v >= 0)
        if self.tau_final is not None:
            _real(self, "tau_final", "a finite number > 0 or None", lambda v: v > 0)
        if self.grad_clip is not None:
            _real(self, "grad_clip", "a finite number > 0 or None (no clipping)", lambda v: v > 0)
        if self.mask_norm is not None and self.mask_norm not in _MASK_NORM:
            raise bad_input("mask_norm", f"one of {_MASK_NORM} or None (by objective)", repr(self.mask_norm))
        if self.reading_gain is not None:
            _real(self, "reading_gain", "a finite number >= 0 or None (fixed warm-up)", lambda v: v >= 0)
        if self.train_predictor_after_warmup not in ("auto", True, False) or not isinstance(
            self.train_predictor_after_warmup, (bool, str)
        ):
            raise bad_input("train_predictor_after_warmup", "'auto', True or False", repr(self.train_predictor_after_warmup))
        for name in ("hard", "copy_predictor"):
            if not isinstance(getattr(self, name), bool):
                raise bad_input(name, "a bool", repr(getattr(self, name)))
        if self.cap_at_blank not in ("auto", True, False) or not isinstance(self.cap_at_blank, (bool, str)):
            raise bad_input("cap_at_blank", "'auto', True or False", repr(self.cap_at_blank))
        if self.fused_linear not in FUSED_LINEAR or not isinstance(self.fused_linear, (bool, str)):
            raise bad_input("fused_linear", f"one of {FUSED_LINEAR}", repr(self.fused_linear))
        targets = self.lora_targets
        if not (isinstance(targets, str) or (isinstance(targets, (list, tuple)) and all(isinstance(t, str) for t in targets))):
            raise bad_input("lora_targets", "a string or a list of module names", repr(targets))

    @property
    def predictor_learning_rate(self) -> float:
        """``predictor_lr`` resolved: ``"auto"`` by ``predictor_training``, ``None`` as ``lr``."""
        if self.predictor_lr == "auto":
            return LORA_PREDICTOR_LR if self.predictor_training == "lora" else PREDICTOR_LR
        return self.lr if self.predictor_lr is None else self.predictor_lr

    @property
    def joint_predictor(self) -> bool:
        """``train_predictor_after_warmup`` resolved: ``"auto"`` holds a LoRA-adapted predictor fixed."""
        if self.train_predictor_after_warmup == "auto":
            return self.predictor_training != "lora"
        return bool(self.train_predictor_after_warmup)

    @property
    def caps_at_blank(self) -> bool:
        """``cap_at_blank`` resolved: ``"auto"`` caps unless the predictor is trained fully with the weights."""
        if self.cap_at_blank == "auto":
            learns = self.predictor_training == "full" and self.joint_predictor and self.predictor_learning_rate > 0
            return not learns
        return bool(self.cap_at_blank)

    @property
    def mask_normalization(self) -> str:
        """``mask_norm`` with ``None`` resolved by ``objective`` (length-normalised when normalized)."""
        if self.mask_norm is not None:
            return self.mask_norm
        return "length" if self.objective == "normalized" else "sum"

    @classmethod
    def literal(cls, **overrides) -> MaskLearnerConfig:
        """The paper's objective read literally: sums over prefixes, answer tokens and kept tokens,
        no warm-up, a constant temperature, the predictor trained jointly at the weights' rate.
        Expect it to collapse with a predictor that starts untrained, and to mask nothing with a
        pre-trained one (see the class doc)."""
        base = {
            "objective": "literal",
            "alpha": 0.5,
            "predictor_warmup": 0.0,
            "reading_gain": None,
            "tau_final": None,
            "predictor_lr": None,
            "train_predictor_after_warmup": True,
            "cap_at_blank": False,
        }
        return cls(**{**base, **overrides})

    def to_dict(self) -> dict:
        return asdict(self)
