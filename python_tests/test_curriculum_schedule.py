"""ProgressiveSchedule: invariants C1–C7, persistence, ablations, summary and plots."""

from __future__ import annotations

import io
import logging
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kpod_ops.curriculum import ProgressiveSchedule, StepTable
from kpod_ops.errors import KPODInputError


def random_difficulties(seed: int, n_max: int = 40, steps_max: int = 6) -> tuple[dict, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, n_max + 1))
    d = {}
    for i in range(n):
        row = rng.gamma(2.0, 0.5, int(rng.integers(1, steps_max + 1)))
        if rng.random() < 0.1:
            row[rng.integers(0, row.size)] = 0.0
        d[f"q{i}"] = row
    return d, rng.integers(0, int(rng.integers(1, 6)), n)


config = st.fixed_dictionaries({
    "n_epochs": st.integers(2, 12),
    "beta": st.sampled_from([0.0, 12.0]),
    "delta_s": st.sampled_from([1, 2]),
    "solver": st.sampled_from(["ftgp", "greedy_max", "density_greedy", "marginal_greedy"]),
    "init": st.sampled_from(["rounds", "last_steps"]),
    "c0_ratio": st.sampled_from([0.0, 0.3, 0.9]),
})


def check_invariants(s: ProgressiveSchedule, table: StepTable) -> None:
    T, ds, n = s.n_stages, s.config["delta_s"], table.n_steps
    budget = s.budget
    prev = s.stage_given_steps(0)
    assert np.all((prev >= 0) & (prev <= n))
    h_prev = table.remaining(prev).sum()
    if s.config["init"] == "rounds" and s.config["progressive"]:
        assert h_prev <= budget.c0 + 1e-9 * max(1.0, budget.total)
    for t in range(1, T + 1):
        c = s.stage_given_steps(t)
        assert np.all((c >= 0) & (c <= n))  # C1
        moved = prev - c
        assert np.all((moved == 0) | (moved == np.minimum(ds, prev)))  # C2
        selected = s.selection(t)
        assert np.array_equal(np.flatnonzero(moved), selected)
        assert np.unique(selected).size == selected.size
        assert np.all(prev[selected] > 0)  # C5
        h = table.remaining(c).sum()
        headroom = budget(t) - h_prev
        tol = 1e-9 * max(1.0, budget.total)
        if headroom <= 0:
            assert selected.size == 0  # C5
        assert h - h_prev <= max(headroom, 0.0) + tol  # C4: Σ δ_i ≤ ΔD
        if h_prev <= budget(t - 1) + tol:
            assert h <= budget(t) + tol
        record = s.records[t]
        assert record.realised == pytest.approx(h, abs=tol) and record.selected == selected.size
        prev, h_prev = c, h
    for epoch in range(T + 1, s.config["n_epochs"] + 3):  # C3
        assert not any(s.given_steps(epoch).values())


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), config)
def test_c1_to_c6(seed, cfg):
    d, labels = random_difficulties(seed)
    s = ProgressiveSchedule.build(d, labels, **cfg)
    table = StepTable.from_rows(d)
    if table.total() == 0.0:  # every difficulty 0: the schedule gives every step difficulty 1 instead (and warns)
        table = StepTable(table.ids, table.n_steps, np.ones_like(table.values))
    check_invariants(s, table)
    again = ProgressiveSchedule.build(d, labels, **cfg)  # C6
    for t in range(s.n_stages + 1):
        assert np.array_equal(s.stage_given_steps(t), again.stage_given_steps(t))


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(2, 12))
def test_c7_ablations(seed, n_epochs):
    d, labels = random_difficulties(seed)
    off = ProgressiveSchedule.build(d, labels, n_epochs=n_epochs, progressive=False)
    for epoch in range(1, n_epochs + 1):
        assert set(off.given_steps(epoch).values()) == {0}
    assert all(r.selected == 0 for r in off.records)
    flat = ProgressiveSchedule.build(d, labels, n_epochs=n_epochs, beta=0.0)
    table = StepTable.from_rows(d)
    if table.total() == 0.0:  # every difficulty 0: the schedule gives every step difficulty 1 instead (and warns)
        table = StepTable(table.ids, table.n_steps, np.ones_like(table.values))
    for r in flat.records[1:]:  # β = 0: the value is the filled knapsack, nothing for diversity
        prev = table.remaining(flat.stage_given_steps(r.stage - 1)).sum()
        assert r.shifted_value == pytest.approx(r.realised - prev, abs=1e-9)


def test_given_steps_is_indexed_by_epoch_and_id():
    d = {"a": [1.0, 2.0, 3.0], "b": [0.5, 0.5], "c": [4.0]}
    s = ProgressiveSchedule.build(d, {"a": 0, "b": 1, "c": 0}, n_epochs=6, init="last_steps", c0_ratio=0.0)
    assert s.n_stages == 3
    assert s.stage_given_steps(0).tolist() == [2, 1, 0]
    for epoch in range(1, 7):
        g = s.given_steps(epoch)
        assert list(g) == ["a", "b", "c"] and all(isinstance(v, int) for v in g.values())
    assert s.given_steps(4) == {"a": 0, "b": 0, "c": 0}
    assert s.given_steps_array(2).tolist() == [s.given_steps(2)[k] for k in "abc"]
    assert s.index_of("b") == 1
    with pytest.raises(KPODInputError, match="epoch"):
        s.given_steps(0)
    with pytest.raises(KPODInputError, match="question_id"):
        s.index_of("zz")


def test_state_dict_round_trip_through_torch_save():
    d, labels = random_difficulties(3, n_max=60)
    s = ProgressiveSchedule.build(d, labels, n_epochs=10)
    buf = io.BytesIO()
    torch.save(s.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    restored = ProgressiveSchedule.from_state_dict(state)
    other = ProgressiveSchedule.build({"x": [1.0]}, [0], n_epochs=2)
    other.load_state_dict(state)
    for epoch in range(1, 12):
        assert restored.given_steps(epoch) == s.given_steps(epoch) == other.given_steps(epoch)
    assert restored.summary() == s.summary()
    assert restored.records == s.records
    bad = dict(state, version=99)
    with pytest.raises(KPODInputError, match="state"):
        other.load_state_dict(bad)
    bad = dict(state, selections=state["selections"][:-1])
    with pytest.raises(KPODInputError, match="state"):
        other.load_state_dict(bad)


def test_matches_hand_computed_plan():
    """Two questions, one cluster, β = 0, Δs = 1, init n − 1: every stage hand-checked."""
    d = {"a": [1.0, 1.0, 1.0], "b": [2.0, 2.0]}
    s = ProgressiveSchedule.build(d, [0, 0], n_stages=2, c0_ratio=0.0, beta=0.0, init="last_steps", p=0.0)
    # B = 7; D(1) = 3.5, D(2) = 7; start c = (2, 1), h = 1 + 2 = 3
    # stage 1: ΔD = 0.5, costs (a: 1, b: 2) -> nothing fits
    # stage 2: ΔD = 4, costs (1, 2) -> both: c = (1, 0), h = 6
    assert [s.stage_given_steps(t).tolist() for t in range(3)] == [[2, 1], [2, 1], [1, 0]]
    assert [r.realised for r in s.records] == pytest.approx([3.0, 3.0, 6.0])
    assert s.jump() == (1, 1)


def test_summary_plots_and_jump_log(tmp_path, caplog):
    d, labels = random_difficulties(11, n_max=80, steps_max=10)
    with caplog.at_level(logging.INFO, logger="kpod_ops.curriculum.planner"):
        s = ProgressiveSchedule.build(d, labels, n_epochs=4)
    questions, steps = s.jump()
    assert questions > 0 and f"{questions} questions" in caplog.text
    text = s.summary()
    assert "D(t)" in text and "realised" in text and f"jump: {questions} questions, {steps} steps" in text
    assert len(text.splitlines()) == 5 + s.n_stages + 1 + 1 + 1  # header, stages 0..T, the jump, the legend
    assert text.splitlines()[-1].startswith("eligible: ")
    paths = s.save_plots(tmp_path / "plots")
    assert [p.name for p in paths] == ["budget.png", "given_steps.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_step_table_input_and_bad_inputs():
    table = StepTable.from_flat([1.0, 2.0, 3.0, 0.5], [2, 1, 1], ids=["a", "b", "c"])
    s = ProgressiveSchedule.build(table, np.array([0, 1, 1]), n_stages=3)
    assert s.ids == ("a", "b", "c")
    with pytest.raises(KPODInputError, match="clusters"):
        ProgressiveSchedule.build(table, [0, 1], n_stages=3)
    with pytest.raises(KPODInputError, match="clusters"):
        ProgressiveSchedule.build(table, {"a": 0, "b": 1}, n_stages=3)
    with pytest.raises(KPODInputError, match="n_epochs"):
        ProgressiveSchedule.build(table, [0, 1, 1])
    with pytest.raises(KPODInputError, match="delta_s"):
        ProgressiveSchedule.build(table, [0, 1, 1], n_stages=3, delta_s=0)
    with pytest.raises(KPODInputError, match="init"):
        ProgressiveSchedule.build(table, [0, 1, 1], n_stages=3, init="middle")
    with pytest.raises(KPODInputError, match="solver"):
        ProgressiveSchedule.build(table, [0, 1, 1], n_stages=3, solver="magic")
    with pytest.raises(KPODInputError, match="values"):
        StepTable.from_flat([1.0, 2.0], [2, 1])


def test_last_epoch_trains_the_full_rationale_and_epochs_match_stages():
    d, labels = {"a": [1.0, 2.0, 3.0], "b": [0.5, 0.5]}, [0, 1]
    with pytest.raises(KPODInputError, match=r"n_epochs: expected an int >= 2 .*progressive=False.*got 1"):
        ProgressiveSchedule.build(d, labels, n_epochs=1)
    single = ProgressiveSchedule.build(d, labels, n_epochs=1, progressive=False)
    assert set(single.given_steps(1).values()) == {0}
    with pytest.raises(KPODInputError, match=r"n_stages: expected T < n_epochs=3 .*got 5"):
        ProgressiveSchedule.build(d, labels, n_epochs=3, n_stages=5)
    with pytest.raises(KPODInputError, match=r"n_stages: expected T < n_epochs=3"):
        ProgressiveSchedule.build(d, labels, n_epochs=3, n_stages=3)
    for bad in (0, -4, 2.7, True, "4"):
        with pytest.raises(KPODInputError, match="n_epochs"):
            ProgressiveSchedule.build(d, labels, n_epochs=bad, n_stages=1)
    with pytest.raises(KPODInputError, match="n_stages"):
        ProgressiveSchedule.build(d, labels, n_stages=2.7)
    both = ProgressiveSchedule.build(d, labels, n_epochs=np.int64(5), n_stages=torch.tensor(4))
    assert (both.config["n_epochs"], both.n_stages) == (5, 4) and type(both.config["n_epochs"]) is int
    for epochs in range(2, 8):
        s = ProgressiveSchedule.build(d, labels, n_epochs=epochs)
        assert s.n_stages < epochs and set(s.given_steps(epochs).values()) == {0}


def test_numpy_and_torch_values_become_plain_python_and_load_weights_only():
    ids = np.arange(4, dtype=np.int64)
    d = {i: np.array([1.0, 2.0, 0.5]) for i in ids}
    clusters = {i: np.int32(i % 2) for i in ids}
    s = ProgressiveSchedule.build(d, clusters, n_epochs=np.int64(6), beta=np.float32(12.0), p=torch.tensor(0.5),
                                  c0_ratio=np.float64(0.3), delta_s=np.int8(1), solver="ftgp",
                                  solver_options={"epsilon": np.float32(0.1)})
    assert all(type(i) is int for i in s.ids)
    assert type(s.config["beta"]) is float and type(s.config["epsilon"]) is float
    buf = io.BytesIO()
    torch.save(s.state_dict(), buf)
    buf.seek(0)
    restored = ProgressiveSchedule.from_state_dict(torch.load(buf, weights_only=True))
    assert restored.given_steps(2) == s.given_steps(2) and s.index_of(np.int64(2)) == 2
    with pytest.raises(KPODInputError, match="beta"):
        ProgressiveSchedule.build(d, clusters, n_epochs=4, beta=torch.tensor([1.0, 2.0]))
    with pytest.raises(KPODInputError, match="beta"):
        ProgressiveSchedule.build(d, clusters, n_epochs=4, beta=float("nan"))


def test_all_zero_difficulties_warn_and_schedule_by_step_count():
    d = {"a": [0.0, 0.0, 0.0], "b": [0.0, 0.0], "c": [0.0]}
    with pytest.warns(UserWarning, match="every step difficulty is 0"):
        s = ProgressiveSchedule.build(d, [0, 1, 0], n_epochs=8)
    assert s.config["uniform_difficulty"]
    given = [s.stage_given_steps(t).sum() for t in range(s.n_stages + 1)]
    assert given[0] > 0 and given[-1] < given[0] and s.jump()[1] < given[0]  # steps move before T + 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ProgressiveSchedule.build({"a": [0.0, 1.0]}, [0], n_epochs=4)  # some signal: no warning
