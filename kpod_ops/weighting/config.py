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

    Model: ``num_heads``/``mlp_hidden`` size the self-attention layer and the two-layer MLP on top
    of the student's frozen input embedding; ``position`` gives that layer relative positions
    (``"relative"`` learned offset biases, ``"rotary"`` or ``"none"``; the paper names none, but
    without them one attention layer cannot tell "the number after *x*" from any other number).
    ``init_keep_logit`` is the starting pre-sigmoid weight.

    Mask: binary concrete with temperature ``tau``, annealed geometrically to ``tau_final`` over
    training (``None``: constant), soft samples unless ``hard`` (straight-through).

    Objective ``L_k = L_p + alpha * L_m``. ``num_prefixes`` (P) prefix lengths per example estimate
    the paper's sum over all prefixes (see ``kpod_ops.weighting.prefixes``). ``objective``:

    - ``"normalized"`` (default): ``L_p`` is a mean over prefixes of the mean answer-token NLL,
      ``L_m`` the mean keep mask (``mask_norm=None`` means ``"length"``). ``prefix_mean="sampled"``
      (default) weighs the P sampled prefixes alike, so the full rationale counts 1/P;
      ``"all"`` estimates the mean over all L prefix lengths (the full rationale counts 1/L), which
      lets the misleading partial prefixes of a copying predictor dominate. Both terms are O(1) for
      any rationale/answer length and vocabulary, so ``alpha`` (default 0.1) means "nats per answer
      token that keeping every token must buy" (templated answers carry few informative tokens, so
      larger values collapse the weights). Literally (sums) the answer term of a 40-token rationale
      with an 8-token answer is ~L*|a| = 320 times larger per unit, so on a pre-trained predictor
      nothing is ever masked, while on a predictor that cannot read yet ``L_m`` alone decides.
    - ``"literal"``: the paper's sums (``L_p`` over all prefixes and answer tokens, ``L_m = sum m``),
      with the paper's ``alpha = 0.5``.

    ``cap_at_blank``: each prefix's answer NLL is capped at what the predictor gets from that
    prefix with every token masked, so a prefix that misleads the predictor (its NLL is higher with
    the tokens visible than hidden) neither rewards nor punishes keeping them. A pre-trained
    predictor that cannot redo the arithmetic copies the last number it sees, so partial prefixes
    mislead it and, uncapped, teach the weights to hide the numbers (docs/results.md has the
    measurements). A predictor trained jointly learns not to trust partial rationales instead. ``"auto"`` (default) caps unless the predictor is trained fully with
    the weights: it caps a ``"lora"`` or ``"frozen"`` predictor (a pre-trained model; its adapters,
    even when trained on after the warm-up, do not unlearn copying), one held fixed after the
    warm-up, and ``predictor_lr=0``; the paper has no cap (``literal()``: ``False``). Costs one
    more forward pass of the predictor, without gradients, per step.

    ``mask_loss`` is the sampled keep indicators (paper) or the keep probabilities.

    Answer predictor: trained fully (``"full"``, the paper's literal reading), through ``"lora"``
    adapters (``peft``), or ``"frozen"``; ``projection`` maps the student's embedding size to the
    predictor's (``"auto"``: identity when the sizes agree). The model passed in is never changed:
    the learner trains a copy unless ``copy_predictor=False``. ``fused_linear``: ``"auto"``
    computes the answer loss with the fused linear keypoint cross-entropy (no logits) wherever the
    predictor allows it and says why not otherwise (then the logits); ``True`` requires it,
    ``False`` uses the logits (see :class:`~kpod_ops.weighting.AnswerPredictor`).

    ``train_predictor_after_warmup``: whether the predictor keeps learning with the weights once
    the warm-up ends (``True``, the paper's joint training) or is held fixed (``False``).
    ``"auto"`` (default) holds a ``"lora"`` predictor fixed: trained on masks drawn from the
    weights, a pre-trained model co-adapts with them and unlearns reading the rationale (every row
    where the answer's number is hidden teaches it to ignore the rationale), and the weights
    follow it to 0.

    Training: AdamW with ``lr`` for the weight generator and mask embedding, ``predictor_lr``
    (``None``: the same as ``lr``; 0 keeps them fixed) for the predictor, its projection and answer
    head. ``"auto"`` (default) is 1e-4 with ``predictor_training="lora"`` (adapters on a
    pre-trained LM unlearn reading the rationale at higher rates) and 3e-3 otherwise (small predictors trained from scratch; train a pre-trained one fully with a small
    ``predictor_lr`` too). Warm-up: at first only the predictor learns, on masks drawn from the
    initial weights, for at most ``predictor_warmup`` of the steps; with ``reading_gain`` set it
    ends as soon as the predictor reads the rationale (its answer NLL per token with the full
    rationale is at least ``reading_gain`` nats below that with every rationale token masked, on a
    probe of validation examples, on two probes in a row, and not before any training, since an
    untrained model's random outputs can pass one probe). ``warmup_rows``: the warm-up trains the
    predictor on the objective's sampled prefixes (``"prefixes"``) or on the full rationale only
    (``"full"``): a small predictor trained from scratch mostly on partial rationales, where the
    answer is not in view, learns to ignore the rationale; on full ones it learns to read it. Without a warm-up a predictor that cannot read yet gives the weights no reason to
    keep anything, and the mask pressure drives every weight to 0 where the sigmoid saturates and
    nothing recovers. Batches of ``batch_size`` examples, at most ``epochs`` epochs, early
    stopping after ``patience`` post-warm-up epochs without improvement of the validation
    ``monitor``; deterministic given ``seed``.
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
