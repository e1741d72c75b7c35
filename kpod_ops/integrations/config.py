"""``KPODConfig``: KPOD's training options as a dataclass that ``transformers.HfArgumentParser`` parses
next to ``TrainingArguments`` / ``trl.SFTConfig``, so a training script sets them from the command line
like every other option::

    parser = HfArgumentParser((KPODConfig, SFTConfig))
    kpod, args = parser.parse_args_into_dataclasses()
    trainer = KPODSFTTrainer(model, args, train_dataset=rows, **kpod.trainer_kwargs())

Learning rate: the default ``normaliser="sequence"`` (the paper's per-sequence sum) makes each
update (active tokens per sequence) times the update of a token mean at the same learning rate —
61× on the quick preset's data at the full rationale (fewer while the curriculum gives steps), 166×
on GSM-Symbolic with the tiny tokenizer. Learning rates from Hugging Face recipes (token means)
carry over only with ``normaliser="token"``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from ..errors import bad_input
from .hf import NORMALISERS

__all__ = ["KPODConfig"]

_FUSED = {"auto": "auto", "true": True, "false": False}


@dataclass
class KPODConfig:
    """KPOD's options for ``KPODTrainer`` / ``KPODSFTTrainer`` (:meth:`trainer_kwargs`) and
    ``apply_kpod_loss`` (:meth:`patch_kwargs`)."""

    normaliser: str = field(default="sequence", metadata={
        "help": "'sequence' (the paper's per-sequence sum; an update is (active tokens per sequence) times a token "
                "mean's at the same learning rate) or 'token' (a token mean: Hugging Face recipes' learning rates "
                "carry over)", "choices": list(NORMALISERS)})
    fused_linear: str = field(default="auto", metadata={
        "help": "train from the hidden states without [B, T, V] logits: 'auto' (where the model is supported, with a "
                "warning otherwise), 'true' (or an error) or 'false'", "choices": list(_FUSED)})
    chunk_size: str = field(default="auto", metadata={
        "help": "rows per LM-head chunk of the fused linear loss: 'auto' or a positive int"})
    label_smoothing: float | None = field(default=None, metadata={
        "help": "label smoothing of the KPOD loss; None: the TrainingArguments' label_smoothing_factor"})
    schedule_file: str | None = field(default=None, metadata={
        "help": "the curriculum: kpod distill's schedule.json or a torch.save-d ProgressiveSchedule.state_dict()"})
    token_weights_file: str | None = field(default=None, metadata={
        "help": "the mask learner's token weights (a save_token_weights file)"})

    def __post_init__(self) -> None:
        if self.normaliser not in NORMALISERS:
            raise bad_input("normaliser", f"one of {NORMALISERS}", repr(self.normaliser))
        if isinstance(self.fused_linear, bool):
            self.fused_linear = str(self.fused_linear).lower()
        if not isinstance(self.fused_linear, str) or self.fused_linear.lower() not in _FUSED:
            raise bad_input("fused_linear", f"one of {list(_FUSED)} (or a bool)", repr(self.fused_linear))
        self.fused_linear = self.fused_linear.lower()
        if isinstance(self.chunk_size, int) and not isinstance(self.chunk_size, bool):
            self.chunk_size = str(self.chunk_size)
        if not isinstance(self.chunk_size, str) or not (self.chunk_size == "auto" or
                                                        (self.chunk_size.isdigit() and int(self.chunk_size) > 0)):
            raise bad_input("chunk_size", "'auto' or a positive int", repr(self.chunk_size))
        if self.label_smoothing is not None and (isinstance(self.label_smoothing, bool)
                                                 or not 0.0 <= float(self.label_smoothing) < 1.0):
            raise bad_input("label_smoothing", "a float in [0, 1) or None", repr(self.label_smoothing))
        for name in ("schedule_file", "token_weights_file"):
            path = getattr(self, name)
            if path is not None and not os.path.isfile(path):
                raise bad_input(name, "the path of an existing file, or None", repr(path))

    @property
    def fused_linear_value(self) -> bool | str:
        """``fused_linear`` as ``apply_kpod_loss`` takes it (``"auto"``, True or False)."""
        return _FUSED[self.fused_linear]

    @property
    def chunk_size_value(self) -> int | str:
        """``chunk_size`` as the fused linear loss takes it (``"auto"`` or an int)."""
        return self.chunk_size if self.chunk_size == "auto" else int(self.chunk_size)

    def patch_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``apply_kpod_loss`` (label smoothing 0 where None)."""
        return {"fused_linear": self.fused_linear_value, "chunk_size": self.chunk_size_value,
                "label_smoothing": self.label_smoothing or 0.0}

    def trainer_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``KPODTrainer`` / ``KPODSFTTrainer``."""
        return {"normaliser": self.normaliser, "fused_linear": self.fused_linear_value,
                "chunk_size": self.chunk_size_value, "label_smoothing": self.label_smoothing,
                "schedule": self.schedule_file, "token_weights": self.token_weights_file}
