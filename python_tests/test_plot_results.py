"""benchmarks/plot_results.py: the canonical, appendable results files and the plots drawn from them."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import plot_results  # noqa: E402

COMMON = ("run_id", "date", "git_commit", "git_dirty", "versions", "machine", "options")
MACHINE = {"cpu": "Some CPU", "cores": 2, "python": "3.11.7", "torch": "2.13.0+cpu", "numpy": "2.4.6"}


def _loss_run(time_fused: float) -> dict:
    rows = [{"N": 64, "V": 100, "dtype": dtype, "allocator": "default", "mode": mode, "time_s": t}
            for dtype in ("fp32", "bf16") for mode, t in (("eager", 1.0), ("fused", time_fused))]
    return {"machine": MACHINE, "rows": rows}


@pytest.mark.parametrize("benchmark", sorted(plot_results.FILES))
def test_the_published_results_files_have_every_common_field(benchmark):
    rows = plot_results.read(benchmark)
    if benchmark == "train_step" and not rows:
        pytest.skip("no train_step.jsonl yet")
    assert rows, f"benchmarks/results/{plot_results.FILES[benchmark]} is empty or missing"
    for row in rows:
        missing = [k for k in COMMON if k not in row]
        assert not missing, f"{benchmark}: a row without {missing}"
        assert benchmark == "train_step" or row["benchmark"] == benchmark  # bench_train_step.py writes its own lines
        assert "torch" in row["versions"] or benchmark == "schedule"  # bench_schedule.py records numpy only


def test_append_converts_and_the_plots_show_the_latest_run(tmp_path):
    pytest.importorskip("matplotlib")
    first = plot_results.records("loss", _loss_run(0.5), date="2026-01-01T00:00:00Z", commit="a" * 40)
    second = plot_results.records("loss", _loss_run(0.25), date="2026-02-01T00:00:00Z", commit="b" * 40,
                                  options={"argv": "--dtypes fp32 bf16"})
    plot_results.append("loss", first, tmp_path)
    plot_results.append("loss", second, tmp_path)  # appended, never overwritten
    rows = plot_results.read("loss", tmp_path)
    assert len(rows) == 8 and [r["git_commit"][0] for r in rows] == ["a"] * 4 + ["b"] * 4
    assert rows[0]["versions"] == {"python": "3.11.7", "torch": "2.13.0+cpu", "numpy": "2.4.6"}
    assert rows[-1]["options"] == {"argv": "--dtypes fp32 bf16"} and rows[-1]["mode"] == "fused"
    latest = plot_results.latest(rows, lambda r: (r["dtype"], r["mode"]))
    assert sorted(r["time_s"] for r in latest if r["mode"] == "fused") == [0.25, 0.25]
    (png,) = plot_results.plot_all(tmp_path, tmp_path / "plots")
    assert png.name == "bench_loss.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_loss_plot_passes_over_a_later_run_that_did_not_time_eager(tmp_path):
    pytest.importorskip("matplotlib")
    full = plot_results.records("loss", _loss_run(0.5), date="2026-01-01T00:00:00Z", commit="a" * 40)
    variants = {"machine": MACHINE, "rows": [{"N": 64, "V": 100, "dtype": "fp32", "allocator": "default", "mode": "fused",
                                              "time_s": 0.4, "cpu_capability": "avx2"}]}  # --modes fused alone
    plot_results.append("loss", full, tmp_path)
    plot_results.append("loss", plot_results.records("loss", variants, date="2026-02-01T00:00:00Z", commit="b" * 40), tmp_path)
    (png,) = plot_results.plot_all(tmp_path, tmp_path / "plots")
    assert png.name == "bench_loss.png"


def test_the_command_appends_a_scripts_output_with_the_commit(tmp_path):
    run = tmp_path / "bench_weighting_run.json"
    run.write_text(json.dumps({"machine": "AMD EPYC, 2 cores, 23.5 GiB, Linux 6, Python 3.11.7, torch 2.13.0+cpu (2 threads)",
                               "batch": 4, "prefixes": 4, "mask_step_shared_s": 3.0, "mask_step_per_row_s": 7.8,
                               "student_fwd_bwd_s": 2.1}))
    assert plot_results.main(["--results", str(tmp_path), "append", "weighting", str(run), "--commit", "c" * 40,
                              "--option", "repeats=2"]) == 0
    (row,) = plot_results.read("weighting", tmp_path)
    assert row["git_commit"] == "c" * 40 and row["options"] == {"repeats": 2} and row["mask_step_shared_s"] == 3.0
    assert row["versions"] == {"python": "3.11.7", "torch": "2.13.0+cpu"} and row["date"].endswith("Z")
    with pytest.raises(ValueError, match="expected a benchmark script's JSON output with 'machine'"):
        plot_results.records("weighting", {"batch": 4}, date="2026-01-01T00:00:00Z", commit=None)
    with pytest.raises(ValueError, match="benchmark: expected one of"):
        plot_results.records("speed", {"machine": {}}, date="2026-01-01T00:00:00Z", commit=None)
