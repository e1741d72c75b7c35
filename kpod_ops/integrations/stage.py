"""The curriculum stage, shared with data-loader worker processes.

Data-loader workers hold copies of the collator: reassigning ``collator.given_steps`` in the main
process does not reach persistent workers. :class:`ScheduledGivenSteps` is a ``given_steps``
callable for :class:`~kpod_ops.data.KPODCollator` that reads the current stage from a one-element
tensor in shared memory, so setting the stage in the main process (``set_stage``) reaches every
worker, whether forked or spawned, persistent or not.
"""

from __future__ import annotations

from collections.abc import Hashable

import numpy as np
import torch

from ..curriculum import ProgressiveSchedule
from ..errors import bad_input


class ScheduledGivenSteps:
    """``c_i`` for question ``id`` at the current stage of ``schedule`` (1-based epochs).

    Pass it as ``KPODCollator(..., given_steps=ScheduledGivenSteps(schedule))`` and move the stage
    with :meth:`set_stage` (``KPODCallback`` does this every epoch).
    """

    def __init__(self, schedule: ProgressiveSchedule, stage: int = 1) -> None:
        if not isinstance(schedule, ProgressiveSchedule):
            raise bad_input("schedule", "a kpod_ops.ProgressiveSchedule", type(schedule).__name__)
        self.schedule = schedule
        self._stage = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._cached: tuple[int, np.ndarray] | None = None
        self.set_stage(stage)

    @property
    def stage(self) -> int:
        """The current stage (training epoch, 1-based)."""
        return int(self._stage[0])

    def set_stage(self, stage: int) -> None:
        """Move every process that holds this object (workers included) to ``stage`` (epoch, 1-based)."""
        if isinstance(stage, bool) or int(stage) != stage or stage < 1:
            raise bad_input("stage", "a 1-based epoch (int >= 1)", stage)
        self._stage[0] = int(stage)

    def __call__(self, question_id: Hashable) -> int:
        stage = self.stage
        if self._cached is None or self._cached[0] != stage:
            self._cached = (stage, self.schedule.given_steps_array(stage))
        return int(self._cached[1][self.schedule.index_of(question_id)])

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_cached"] = None
        return state

    def __repr__(self) -> str:
        return f"ScheduledGivenSteps(stage={self.stage}, schedule={self.schedule!r})"
