"""ProgressiveSchedule: how many leading rationale steps each question is given, epoch by epoch."""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import bad_input
from .budget import DifficultyBudget
from .convert import plain_float, plain_int
from .planner import Plan, StageRecord, plan_schedule
from .solvers import DEFAULT_SOLVER, Solver, get_solver
from .table import StepTable

STATE_VERSION = 1


def _cluster_array(clusters: object, ids: tuple[Hashable, ...]) -> np.ndarray:
    if isinstance(clusters, Mapping):
        missing = [i for i in ids if i not in clusters]
        if missing:
            raise bad_input("clusters", "a cluster label for every question id", f"none for {missing[0]!r} ({len(missing)} missing)")
        arr = np.asarray([clusters[i] for i in ids])
    else:
        arr = np.asarray(clusters.detach().cpu().numpy() if hasattr(clusters, "detach") else clusters)
    if arr.shape != (len(ids),):
        raise bad_input("clusters", f"{len(ids)} labels (one per question)", f"shape {arr.shape}")
    if arr.size and (not np.issubdtype(arr.dtype, np.integer) or arr.min() < 0):
        raise bad_input("clusters", "integer labels >= 0", f"dtype {arr.dtype}, min {arr.min()}")
    return arr.astype(np.int64)


def _epochs_and_stages(n_epochs: object, n_stages: object, progressive: bool) -> tuple[int, int]:
    """(N_e, T), checked: T < N_e so that at least the last epoch trains the full rationale."""
    if n_epochs is None and n_stages is None:
        raise bad_input("n_epochs", "n_epochs or n_stages (or both)", None)
    epochs = None if n_epochs is None else plain_int("n_epochs", n_epochs, "an int >= 1", minimum=1)
    stages = None if n_stages is None else plain_int("n_stages", n_stages, "an int T >= 1", minimum=1)
    if stages is None:
        if progressive and epochs < 2:
            raise bad_input("n_epochs", "an int >= 2 (the stages with given steps, then at least one epoch on the "
                            "full rationale), or progressive=False for a single epoch", epochs)
        stages = max(1, epochs // 2)
    if epochs is None:
        epochs = 2 * stages
    if progressive and stages >= epochs:
        raise bad_input("n_stages", f"T < n_epochs={epochs} (the last epoch trains the full rationale), "
                        f"e.g. n_stages={max(1, epochs // 2)}", stages)
    return epochs, stages


def _np(x: object) -> np.ndarray:
    return x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


class ProgressiveSchedule:
    """The whole KPOD curriculum, computed once before training from step difficulties and clusters.

    Stage t = epoch t (1-indexed). For t ≤ T question i is given its first ``c_i(t)`` rationale steps
    as input and learns the rest; after T every question gets c_i = 0 (full rationale from the
    question alone). Build it with :meth:`build`; query with :meth:`given_steps`.
    """

    def __init__(self, ids: Sequence[Hashable], n_steps: np.ndarray, plan: Plan, config: dict) -> None:
        self._ids = tuple(ids)
        self._n_steps = np.asarray(n_steps, dtype=np.int64)
        self._plan = plan
        self.config = dict(config)
        self._cache: tuple[int, np.ndarray] = (0, np.zeros(len(self._ids), dtype=np.int64))
        self._index = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(
        cls,
        difficulties: Mapping[Hashable, object] | Sequence[object] | StepTable,
        clusters: Mapping[Hashable, int] | Sequence[int] | np.ndarray,
        *,
        n_epochs: int | None = None,
        n_stages: int | None = None,
        p: float = 0.5,
        c0_ratio: float = 0.3,
        beta: float = 12.0,
        delta_s: int = 1,
        solver: str | Solver = DEFAULT_SOLVER,
        solver_options: Mapping[str, object] | None = None,
        init: str = "rounds",
        progressive: bool = True,
        n_clusters: int | None = None,
    ) -> ProgressiveSchedule:
        """Plan every stage.

        Args:
            difficulties: ``{id: per-step d_k}`` (Eq. 8), a sequence of them (ids 0..n−1), or a
                :class:`StepTable` (the scalable form). Ids are stored as plain Python values
                (NumPy/torch integers become ``int``). If every difficulty is 0 a warning is given
                and every step counts 1 (``config["uniform_difficulty"]``).
            clusters: cluster label per question (mapping by id, or aligned with the difficulties).
            n_epochs / n_stages: training epochs N_e and the stage T where D reaches B; give either
                or both (T = N_e // 2 by default, the paper's "half the epochs"; N_e = 2T when only T
                is given). The last epoch always trains the full rationale, so 1 <= T <= N_e − 1
                (N_e >= 2) unless ``progressive=False``.
            p, c0_ratio: budget shape D(t) = C0 + (B − C0)(t/T)^(p+1) with C0 = c0_ratio·B.
            beta: diversity weight β (``0`` = the w.o.-div ablation).
            delta_s: steps a selected question moves per stage (Δs).
            solver, solver_options: a name from ``SOLVERS`` (``"ftgp"`` default) or a Solver.
            init: how c_i(0) is set, see ``planner.INITS``.
            progressive: ``False`` = the w.o.-prog ablation, c ≡ 0 at every epoch.
            n_clusters: K, if some clusters have no question.
        """
        table = difficulties if isinstance(difficulties, StepTable) else StepTable.from_rows(difficulties)
        if table.n_questions == 0:
            raise bad_input("difficulties", "per-step difficulties for at least one question", "none")
        labels = _cluster_array(clusters, table.ids)
        n_epochs, n_stages = _epochs_and_stages(n_epochs, n_stages, bool(progressive))
        delta_s = plain_int("delta_s", delta_s, "an int Δs >= 1", minimum=1)
        beta = plain_float("beta", beta, "a finite β >= 0", minimum=0.0)
        p = plain_float("p", p, "a finite p >= 0", minimum=0.0)
        c0_ratio = plain_float("c0_ratio", c0_ratio, "a ratio in [0, 1]", minimum=0.0, maximum=1.0)
        n_clusters = None if n_clusters is None else plain_int("n_clusters", n_clusters, "an int K >= 1 or None", minimum=1)
        if table.n_questions and table.total() == 0.0 and progressive:
            warnings.warn(
                "ProgressiveSchedule.build: every step difficulty is 0, so the difficulty budget cannot order the "
                "questions; every step is given difficulty 1 instead (the schedule then moves questions by step "
                "count). Check the difficulty scoring (model, token weights) if this is unexpected.",
                UserWarning,
                stacklevel=2,
            )
            table = StepTable(table.ids, table.n_steps, np.ones_like(table.values))
            uniform = True
        else:
            uniform = False
        k = max(int(n_clusters or 0), int(labels.max()) + 1 if labels.size else 1)
        budget = DifficultyBudget(table.total(), int(n_stages), p=p, c0_ratio=c0_ratio)
        the_solver = get_solver(solver, **dict(solver_options or {}))
        plan = plan_schedule(table, labels, budget, beta=beta, delta_s=delta_s, solver=the_solver,
                             init=init, progressive=bool(progressive), n_clusters=k)
        config = {
            "n_epochs": int(n_epochs), "n_stages": int(n_stages), "p": float(p), "c0_ratio": float(c0_ratio),
            "total": budget.total, "c0": budget.c0, "beta": float(beta), "delta_s": int(delta_s),
            "solver": the_solver.name, "guarantee": the_solver.guarantee, "init": init,
            "progressive": bool(progressive), "n_clusters": k, "n_questions": table.n_questions,
            "uniform_difficulty": uniform,
        }
        if hasattr(the_solver, "epsilon"):
            config["epsilon"] = float(the_solver.epsilon)
        return cls(table.ids, table.n_steps, plan, config)

    # ------------------------------------------------------------------ queries
    @property
    def ids(self) -> tuple[Hashable, ...]:
        return self._ids

    @property
    def n_stages(self) -> int:
        """T: the last stage with given steps; c ≡ 0 from epoch T + 1 on."""
        return int(self.config["n_stages"])

    @property
    def n_steps(self) -> np.ndarray:
        return self._n_steps.copy()

    @property
    def budget(self) -> DifficultyBudget:
        return DifficultyBudget(self.config["total"], self.n_stages, p=self.config["p"], c0=self.config["c0"])

    @property
    def records(self) -> list[StageRecord]:
        """One :class:`StageRecord` per stage 0..T."""
        return list(self._plan.records)

    def selection(self, stage: int) -> np.ndarray:
        """Question indices (into :attr:`ids`) selected at stage 1 ≤ t ≤ T."""
        if not 1 <= stage <= self.n_stages:
            raise bad_input("stage", f"an int in [1, {self.n_stages}]", stage)
        return self._plan.selections[stage - 1].astype(np.int64)

    def stage_given_steps(self, stage: int) -> np.ndarray:
        """c_i(t) for every question (order of :attr:`ids`), stage 0 ≤ t; 0 for t > T."""
        if isinstance(stage, bool) or int(stage) != stage or stage < 0:
            raise bad_input("stage", "an int >= 0", stage)
        stage = int(stage)
        if stage > self.n_stages:
            return np.zeros(len(self._ids), dtype=np.int64)
        done, moves = self._cache
        if stage < done:
            done, moves = 0, np.zeros_like(moves)
        moves = moves.copy()
        for t in range(done + 1, stage + 1):
            moves[self._plan.selections[t - 1]] += 1
        self._cache = (stage, moves)
        return np.maximum(self._plan.given0.astype(np.int64) - self.config["delta_s"] * moves, 0)

    def given_steps_array(self, epoch: int) -> np.ndarray:
        """c_i for training epoch ``epoch`` (1-indexed), aligned with :attr:`ids`."""
        if isinstance(epoch, bool) or int(epoch) != epoch or epoch < 1:
            raise bad_input("epoch", "a 1-indexed epoch (int >= 1)", epoch)
        return self.stage_given_steps(int(epoch))

    def given_steps(self, epoch: int) -> dict[Hashable, int]:
        """``{question id: c_i}`` for epoch ``epoch`` (1-indexed): steps given as input (0 after T)."""
        return dict(zip(self._ids, self.given_steps_array(epoch).tolist()))

    def index_of(self, question_id: Hashable) -> int:
        """Position of a question id in :attr:`ids`."""
        if self._index is None:
            self._index = {q: i for i, q in enumerate(self._ids)}
        if question_id not in self._index:
            raise bad_input("question_id", "an id of the scheduled questions", repr(question_id))
        return self._index[question_id]

    def jump(self) -> tuple[int, int]:
        """(questions, steps) still given at T that jump to c = 0 at T + 1 (allowed; docs/method.md, R14)."""
        c = self.stage_given_steps(self.n_stages)
        return int(np.count_nonzero(c)), int(c.sum())

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict:
        """Everything needed to continue the same plan (tensors and plain Python; ``torch.save``-able)."""
        return {
            "version": STATE_VERSION,
            "ids": list(self._ids),
            "n_steps": torch.from_numpy(self._n_steps.copy()),
            "given0": torch.from_numpy(self._plan.given0.astype(np.int64)),
            "selections": [torch.from_numpy(s.astype(np.int64)) for s in self._plan.selections],
            "records": [r.to_dict() for r in self._plan.records],
            "config": dict(self.config),
        }

    def load_state_dict(self, state: Mapping) -> None:
        """Replace this schedule's plan with a saved one (checked for consistency first)."""
        if not isinstance(state, Mapping) or state.get("version") != STATE_VERSION:
            raise bad_input("state", f"a ProgressiveSchedule state_dict of version {STATE_VERSION}",
                            state.get("version") if isinstance(state, Mapping) else type(state).__name__)
        ids = tuple(state["ids"])
        n_steps = _np(state["n_steps"]).astype(np.int64)
        given0 = _np(state["given0"]).astype(np.int64)
        selections = [_np(s).astype(np.int64) for s in state["selections"]]
        config = dict(state["config"])
        n = len(ids)
        if n_steps.shape != (n,) or given0.shape != (n,) or np.any(given0 < 0) or np.any(given0 > n_steps):
            raise bad_input("state", f"n_steps and given0 of shape ({n},) with 0 <= given0 <= n_steps", "inconsistent arrays")
        if len(selections) != int(config["n_stages"]) or any(s.size and (s.min() < 0 or s.max() >= n) for s in selections):
            raise bad_input("state", f"{config['n_stages']} selections of question indices in [0, {n})", f"{len(selections)} selections")
        records = [StageRecord(**{**r, "per_cluster": tuple(r["per_cluster"])}) for r in state["records"]]
        self._ids, self._n_steps, self.config = ids, n_steps, config
        self._plan = Plan(given0, [s.astype(np.int32 if n < 2**31 else np.int64) for s in selections], records)
        self._cache = (0, np.zeros(n, dtype=np.int64))
        self._index = None

    @classmethod
    def from_state_dict(cls, state: Mapping) -> ProgressiveSchedule:
        """A schedule restored from :meth:`state_dict`."""
        obj = cls.__new__(cls)
        obj.load_state_dict(state)
        return obj

    # ------------------------------------------------------------------ reporting
    def summary(self) -> str:
        """A table per stage: target D(t), realised total, headroom ΔD, selected (per cluster), mean c."""
        from .report import summary_text

        return summary_text(self)

    def save_plots(self, directory: str | Path) -> list[Path]:
        """Write ``budget.png`` (D(t) vs realised) and ``given_steps.png`` (histogram of c_i); Agg backend."""
        from .report import plot_budget, plot_given_steps

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        return [plot_budget(self, directory / "budget.png"), plot_given_steps(self, directory / "given_steps.png")]

    def __repr__(self) -> str:
        c = self.config
        return (f"ProgressiveSchedule(questions={len(self._ids)}, T={c['n_stages']}, epochs={c['n_epochs']}, "
                f"solver={c['solver']!r}, beta={c['beta']}, progressive={c['progressive']})")
