"""`kpod compare` as a study tool: paired statistics on known inputs, seed lists, side-by-side jobs, resume."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file
from test_cli import TINY

from kpod_ops.cli import main
from kpod_ops.data import load_builtin, write_jsonl
from kpod_ops.errors import KPODInputError
from kpod_ops.pipeline.compare import format_table, parse_seeds, table
from kpod_ops.pipeline.config import merge, preset_config, resolve_method
from kpod_ops.pipeline.stats import paired_summary, sign_flip_p


def test_paired_t_interval_sign_flip_p_and_detectable_effect_on_known_numbers():
    s = paired_summary([0.05, 0.06, 0.04])
    assert s["n_pairs"] == 3 and s["diff_mean"] == pytest.approx(0.05) and s["diff_sd"] == pytest.approx(0.01)
    half = 4.302652729911275 * 0.01 / 3 ** 0.5  # t_{0.975, 2} · sd / √n
    assert s["diff_ci95"] == pytest.approx([0.05 - half, 0.05 + half])
    assert s["p_sign_flip"] == pytest.approx(2 / 8)  # only all-plus and all-minus are as far from 0
    assert s["mde80"] == pytest.approx((4.302652729911275 + 1.0606601717798214) * 0.01 / 3 ** 0.5)


def test_sign_flip_p_values():
    assert sign_flip_p([1, 2, 3, 4, 5, 6]) == pytest.approx(2 / 64)
    # an observed mean of 0: every assignment is at least as far from 0
    assert sign_flip_p([1, -1, 1, -1]) == pytest.approx(1.0)
    # 3 of 4 positive, one small negative: assignments with |mean| >= observed, counted by hand
    d = [3.0, 2.0, 1.0, -0.5]
    flips = [(a, b, c, e) for a in (1, -1) for b in (1, -1) for c in (1, -1) for e in (1, -1)]
    hand = sum(abs(a * 3 + b * 2 + c * 1 + e * -0.5) >= 5.5 for a, b, c, e in flips) / 16
    assert sign_flip_p(d) == pytest.approx(hand)
    assert sign_flip_p([0.01] * 25) < 1e-3  # Monte Carlo beyond 20 pairs
    one = paired_summary([0.1])
    assert one["diff_ci95"] is None and one["diff_sd"] is None and one["p_sign_flip"] == 1.0


def test_table_pairs_by_seed_and_formats_every_statistic():
    rows = table({"kpod": {3: 0.45, 4: 0.56, 5: 0.49}, "standard": {3: 0.40, 4: 0.50, 5: 0.45}})
    kpod = rows[0]
    assert kpod["diff_mean"] == pytest.approx(0.05) and kpod["paired_seeds"] == [3, 4, 5]
    assert kpod["accuracies"] == {"3": 0.45, "4": 0.56, "5": 0.49} and "diff_mean" not in rows[1]
    text = format_table(rows)
    assert "+5.0 pts [" in text and "0.25" in text and "one pair" not in text
    assert "one pair: no interval" in format_table(table({"standard": {0: 0.4}, "kpod": {0: 0.5}}))


def test_seed_specs():
    assert parse_seeds("3") == [0, 1, 2] and parse_seeds(2) == [0, 1]
    assert parse_seeds("100-103") == [100, 101, 102, 103]
    assert parse_seeds("100,105,107") == [100, 105, 107] and parse_seeds("1,3-4") == [1, 3, 4]
    for bad in ("0", "5-3", "a", "1,1", "1,,2", "-3"):
        with pytest.raises(KPODInputError, match="--seeds"):
            parse_seeds(bad)


def test_paper_method_fixes_the_papers_settings():
    config = merge(preset_config("quick"), {"method": "paper"})
    paper = resolve_method(config)
    assert paper.weights.floor == 0.0 and paper.curriculum.c0_ratio == 0.3
    assert resolve_method(preset_config("quick")) == preset_config("quick")  # kpod: the preset's own


def test_runs_of_a_seed_that_do_not_share_their_warm_up_are_flagged(tmp_path):
    from kpod_ops.pipeline.compare import unpaired_seeds

    def report(seed, method, prints):
        (tmp_path / f"seed{seed}" / method).mkdir(parents=True)
        (tmp_path / f"seed{seed}" / method / "report.json").write_text(json.dumps({"shared_fingerprints": prints}))

    same = {"warmup": "aa", "weights": "bb"}
    report(1, "kpod", same), report(1, "standard", {"warmup": "aa", "weights": None})  # paired
    report(2, "kpod", same), report(2, "standard", {"warmup": "cc", "weights": None})  # another warm-up
    report(3, "kpod", same), report(3, "no-weights", {"warmup": "aa", "weights": "dd"})  # other token weights
    report(4, "kpod", same), report(4, "standard", None)  # a report from before the fingerprints
    report(5, "kpod", None), report(5, "standard", None)  # nothing to check against
    got = unpaired_seeds(tmp_path, [1, 2, 3, 4, 5, 6], ["kpod", "standard", "no-weights"])
    assert set(got) == {2, 3, 4}
    assert got[2] == "different warmed-up students: kpod vs standard"
    assert got[3] == "different token weights: kpod vs no-weights"
    assert got[4].startswith("standard reused from reports without fingerprints")


@pytest.mark.slow
def test_jobs_give_the_same_runs_as_one_after_another_and_a_rerun_reuses_them(tmp_path, capsys):
    data, config = tmp_path / "data.jsonl", tmp_path / "tiny.json"
    write_jsonl(load_builtin("arith-cot", "train", n=16, seed=3), data)
    config.write_text(json.dumps(TINY))
    common = ["--data", str(data), "--config", str(config), "--allow-degenerate", "--quiet", "--methods", "kpod,standard",
              "--seeds", "5-6"]
    assert main(["compare", *common, "--out", str(tmp_path / "par"), "--jobs", "2"]) == 0
    assert main(["compare", *common, "--out", str(tmp_path / "seq"), "--threads", "1"]) == 0
    for seed in (5, 6):
        for method in ("kpod", "standard"):
            a, b = (load_file(str(tmp_path / run / f"seed{seed}" / method / "student" / "model.safetensors")) for run in ("par", "seq"))
            assert a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a), (seed, method)
    kpod = tmp_path / "par" / "seed5" / "kpod"  # the report says whether the weights rank numbers above words
    assert json.loads((kpod / "report.json").read_text())["weights"]["keypoint_ranking"]["n_keypoint"] > 0
    assert "numbers and operators vs words): ROC-AUC" in (kpod / "report.md").read_text()
    assert "- keypoints: " in (kpod / "report.md").read_text()  # the kept keypoint share, read first
    (tmp_path / "par" / "seed6" / "standard" / "report.json").unlink()  # one run unfinished
    capsys.readouterr()
    assert main(["compare", *common, "--out", str(tmp_path / "par"), "--jobs", "2"]) == 0
    said = capsys.readouterr().out
    assert "seed 5: every method finished before (reused)" in said and "method standard, seed 6" in said
    assert "method kpod, seed 6" not in said  # only the missing run ran
    summary = json.loads((tmp_path / "par" / "compare.json").read_text())
    assert summary["seeds"] == [5, 6] and set(summary["rows"][0]["accuracies"]) == {"5", "6"}
    assert summary["threads_per_run"] == 1  # --jobs 2 without --threads: one thread per run, recorded as such
    assert main(["compare", *common, "--out", str(tmp_path / "par"), "--jobs", "2"]) == 0  # every run reused
    assert json.loads((tmp_path / "par" / "compare.json").read_text())["threads_per_run"] is None
    assert summary["rows"] == json.loads((tmp_path / "seq" / "compare.json").read_text())["rows"]
    assert "not paired" not in said and summary["unpaired_seeds"] == {}
    assert json.loads((kpod / "report.json").read_text())["shared_fingerprints"]["warmup"] is not None
