"""TRL counterpart of :class:`~kpod_ops.integrations.hf.KPODTrainer`: ``KPODSFTTrainer``.

TRL's ``SFTTrainer`` computes its own loss from the hidden states (a fused LM head) and never calls
the model's loss function, so a model patched with ``apply_kpod_loss`` is not enough there (it
raises rather than train plain cross-entropy). ``KPODSFTTrainer`` keeps TRL's set-up (``SFTConfig``,
PEFT ``peft_config``, callbacks) and computes the KPOD loss through the patched model, with the same
normalisers as ``KPODTrainer``. The dataset must already be tokenised KPOD records (``to_record``)
or ``TokenizedExample`` items: TRL's own dataset preparation is skipped, and packing /
padding-free batches are refused.
"""

from __future__ import annotations

from typing import Any

from .._optional import require
from ..errors import bad_input
from .hf import _KPODTrainerMixin

Trainer = require("transformers", extra="hf", feature="kpod_ops.integrations.sft").Trainer
SFTTrainer = require("trl", extra="hf", feature="kpod_ops.integrations.sft").SFTTrainer

__all__ = ["KPODSFTTrainer"]


class KPODSFTTrainer(_KPODTrainerMixin, SFTTrainer):
    """``trl.SFTTrainer`` training the KPOD loss (``normaliser``, ``token_weights``, ``schedule`` and
    ``fused_linear`` as in ``KPODTrainer``)."""

    def __init__(self, model: Any, args: Any = None, data_collator: Any = None, *rest: Any,
                 normaliser: str = "sequence", token_weights: Any = None, schedule: Any = None,
                 fused_linear: bool | str = "auto", **kwargs: Any) -> None:
        if isinstance(model, str):
            raise bad_input("model", "a model object (patched in place), not a name to download", repr(model))
        if args is not None:
            if getattr(args, "packing", False) or getattr(args, "padding_free", False):
                raise bad_input("args", "packing=False and padding_free=False (loss_start is one position per row)",
                                f"packing={args.packing}, padding_free={args.padding_free}")
            args.dataset_kwargs = {**(args.dataset_kwargs or {}), "skip_prepare_dataset": True}
        if kwargs.get("peft_config") is not None:
            raise bad_input("peft_config", "None: wrap the model with peft.get_peft_model before passing it", "a config")
        data_collator, kwargs["callbacks"] = self._kpod_setup(
            model, data_collator, kwargs.get("processing_class", rest[2] if len(rest) > 2 else None), normaliser, token_weights, schedule, fused_linear,
            kwargs.get("callbacks"), kwargs.get("train_dataset", rest[0] if rest else None),
        )
        super().__init__(model, args, data_collator, *rest, **kwargs)
        self._kpod_check_args()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Trainer's loss path: the patched model's KPOD loss (not TRL's fused LM head)."""
        return Trainer.compute_loss(self, model, inputs, return_outputs=return_outputs,
                                    num_items_in_batch=num_items_in_batch)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        return Trainer.prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=ignore_keys)
