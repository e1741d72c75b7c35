"""The curriculum stage, shared with data-loader worker processes.

Data-loader workers hold copies of the collator: reassigning ``collator.given_steps`` in the main
process does not reach persistent workers. :class:`ScheduledGivenSteps` is a ``given_steps``
callable for :class:`~kpod_ops.data.KPODCollator` that reads the current stage from a one-element
tensor in shared memory, so setting the stage in the main process (``set_stage``) reaches every
worker, whether forked or spawned, persistent or not.

Something must move the stage: :class:`~kpod_ops.integrations.hf.KPODCallback` (which
``KPODTrainer(schedule=...)`` adds) or your loop's ``set_stage(epoch)``. A multi-epoch schedule
whose stage nothing ever moved raises at the first epoch boundary (the first question served a
second time) instead of training stage 1 for ever.
"""

from __future__ import annotations

from collections.abc import Hashable

import numpy as np
import torch

from ..curriculum import ProgressiveSchedule
from ..errors import KPODInputError, bad_input


class ScheduledGivenSteps:
    """``c_i`` for question ``id`` at the current stage of ``schedule`` (1-based epochs).

    Pass it as ``KPODCollator(..., given_steps=ScheduledGivenSteps(schedule))`` and move the stage
    with :meth:`set_stage` (``KPODCallback`` does this every epoch).

    ``held_out``: what an id the schedule does not hold gets — ``"error"`` (default: a clear error;
    a plain ``Trainer`` evaluates with its training collator, so held-out evaluation examples reach
    this object) or ``"full"`` (``c = 0``, the full rationale, as ``KPODTrainer``'s evaluation batches
    give every example). Scheduled ids always get the current stage's ``c_i``, in evaluation too.
    """

    def __init__(self, schedule: ProgressiveSchedule, stage: int = 1, *, held_out: str = "error") -> None:
        if not isinstance(schedule, ProgressiveSchedule):
            raise bad_input("schedule", "a kpod_ops.curriculum.ProgressiveSchedule", type(schedule).__name__)
        if held_out not in ("error", "full"):
            raise bad_input("held_out", "'error' or 'full'", repr(held_out))
        self.held_out = held_out
        self.schedule = schedule
        self._stage = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._cached: tuple[int, np.ndarray] | None = None
        self._check_stage(stage)
        self._stage[0] = int(stage)
        # 1 once set_stage was called (something drives the stage); until then, which questions were served, so
        # that the first one served twice (an epoch boundary) finds the stage never moved
        self._driven = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._served = torch.zeros(len(schedule.ids), dtype=torch.uint8).share_memory_()
        self._multi_epoch = int(schedule.config.get("n_epochs", 1) or 1) > 1

    @property
    def stage(self) -> int:
        """The current stage (training epoch, 1-based)."""
        return int(self._stage[0])

    def set_stage(self, stage: int) -> None:
        """Move every process that holds this object (workers included) to ``stage`` (epoch, 1-based)."""
        self._check_stage(stage)
        self._stage[0] = int(stage)
        self._driven[0] = 1

    @property
    def driven(self) -> bool:
        """Whether :meth:`set_stage` was ever called (by ``KPODCallback`` or your loop)."""
        return bool(int(self._driven[0]))

    @staticmethod
    def _check_stage(stage: object) -> None:
        if isinstance(stage, bool) or int(stage) != stage or stage < 1:
            raise bad_input("stage", "a 1-based epoch (int >= 1)", stage)

    def __call__(self, question_id: Hashable) -> int:
        stage = self.stage
        try:
            index = self.schedule.index_of(question_id)
        except KPODInputError:
            if self.held_out == "full":
                return 0
            raise KPODInputError(
                f"ScheduledGivenSteps: expected an id of the schedule's questions, got {question_id!r}: held-out "
                "examples (an eval_dataset) have no schedule. Evaluate with KPODTrainer (its evaluation batches give "
                "c = 0 to every example), or build ScheduledGivenSteps(schedule, held_out='full') so that ids outside "
                "the schedule get c = 0"
            ) from None
        if self._multi_epoch and not int(self._driven[0]):
            if int(self._served[index]):
                raise KPODInputError(
                    f"ScheduledGivenSteps: expected the stage to move at each epoch, got question {question_id!r} "
                    f"served a second time (a new epoch) with the stage still at {stage} and nothing calling "
                    "set_stage: under Trainer add callbacks=[KPODCallback(schedule, given_steps=<this object>)] "
                    "(KPODTrainer(schedule=...) does it for you); in your own loop call .set_stage(epoch) at the start "
                    "of every epoch"
                )
            self._served[index] = 1
        if self._cached is None or self._cached[0] != stage:
            self._cached = (stage, self.schedule.given_steps_array(stage))
        return int(self._cached[1][index])

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_cached"] = None
        return state

    def __repr__(self) -> str:
        return f"ScheduledGivenSteps(stage={self.stage}, schedule={self.schedule!r})"
