"""benchmarks/study/select_rules.py: which restart each rule keeps, scored by a measure no rule sees."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks" / "study"))

import select_rules  # noqa: E402


def _restart(objective, answer, kept, auc, degenerate=None):  # kept share: the AUC minus 0.1, as a stand-in
    return {"val_objective": objective, "val_answer_loss": answer, "val_kept": kept, "keypoint_auc": auc,
            "kept_keypoint_share": None if auc is None else auc - 0.1, "degenerate": degenerate}


SEEDS = {
    # the sparse learner has the lowest objective and missed the keypoints; the others found them
    1: [_restart(0.9, 0.85, 0.40, 0.90), _restart(0.5, 0.49, 0.08, 0.30), _restart(0.8, 0.60, 0.50, 0.95)],
    # the first learner missed; the densest one is degenerate (every token kept) and is passed over
    2: [_restart(0.7, 0.69, 0.10, 0.20), _restart(0.6, 0.50, 0.45, 0.85), _restart(0.9, 0.40, 0.99, None, "kept all")],
}


def test_each_rule_keeps_its_restart_and_is_scored_by_a_measure_it_never_sees(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text("[WARNING] a library's log line on stdout\n"
                    + "".join(json.dumps({"seed": s, "restarts": r}) + "\n" for s, r in SEEDS.items()))
    scores = select_rules.score(select_rules.load([path]), 0.7, measure="auc")
    assert scores["objective"]["auc"] == {1: 0.30, 2: 0.85} and scores["objective"]["missed"] == [1]
    assert scores["answer"]["auc"] == {1: 0.30, 2: 0.85}  # the degenerate restart's lower answer loss is passed over
    assert scores["densest"]["auc"] == {1: 0.95, 2: 0.85} and scores["densest"]["found"] == 2
    assert scores["first"]["auc"] == {1: 0.90, 2: 0.20} and scores["first"]["missed"] == [2]
    first_two = select_rules.score(select_rules.load([path]), 0.7, first=2, measure="auc")
    assert first_two["densest"]["auc"] == {1: 0.90, 2: 0.85}
    shares = select_rules.score(select_rules.load([path]), 0.7)  # the kept share is the default measure
    assert shares["densest"]["kept-share"] == pytest.approx({1: 0.85, 2: 0.75}) and shares["densest"]["found"] == 2
    assert shares["first"]["missed"] == [2] and shares["objective"]["missed"] == [1]


def test_a_line_without_restarts_or_their_fields_is_refused(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps({"seed": 5, "auc": 0.9}) + "\n")
    with pytest.raises(ValueError, match="seed 5 has no restarts"):
        select_rules.load([path])
    path.write_text(json.dumps({"seed": 6, "restarts": [{"val_objective": 1.0, "degenerate": None}]}) + "\n")
    with pytest.raises(ValueError, match="seed 6's restarts lack \\['val_answer_loss', 'val_kept'\\]"):
        select_rules.load([path])


def test_the_mean_rule_scores_the_mean_of_the_restarts_used_and_appears_only_where_every_seed_has_it(tmp_path, capsys):
    means = {1: {"2": {"kept_keypoint_share": 0.65, "auc": 0.9}, "3": {"kept_keypoint_share": 0.8, "auc": 0.95}},
             2: {"2": {"kept_keypoint_share": 0.72, "auc": 0.6}, "3": {"kept_keypoint_share": 0.9, "auc": 0.88}}}
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps({"seed": s, "restarts": r, "mean_of_restarts": means[s]}) + "\n" for s, r in SEEDS.items()))
    assert select_rules.load_means([path]) == means
    assert select_rules.score_mean(means, 3)["found"] == 2
    two = select_rules.score_mean(means, 2)
    assert two["missed"] == [1] and two["kept-share"] == {1: 0.65, 2: 0.72}
    assert select_rules.score_mean(means, 2, measure="auc")["missed"] == [2]
    out = tmp_path / "scores.json"
    sys.argv = ["select_rules.py", str(path), "--first", "2", "--json", str(out)]
    select_rules.main()
    assert json.loads(out.read_text())["mean"]["missed"] == [1] and "mean: 1 of 2 seeds" in capsys.readouterr().out
    path.write_text("".join(json.dumps({"seed": s, "restarts": r}) + "\n" for s, r in SEEDS.items()))  # no means kept
    sys.argv = ["select_rules.py", str(path), "--json", str(out)]
    select_rules.main()
    assert "mean" not in json.loads(out.read_text())
