"""`kpod` end to end on a tiny random student and 16 examples: a finished run, resume after SIGKILL
(bitwise the same student), stage reuse, `kpod eval`, and the bad inputs users hit first."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from kpod_ops.cli import main
from kpod_ops.data import load_builtin, write_jsonl
from kpod_ops.errors import KPODInputError

ROOT = Path(__file__).resolve().parents[1]

# A tiny random student (no warm-up), small everything. The mask learner starts with every keep
# probability near 1 and cannot move (lr 1e-9): its weights are degenerate by construction, so the
# run must allow them explicitly.
TINY = {
    "data": {"test_percent": 25, "val_percent": 10, "max_length": 400},
    "student": {"hidden_size": 32, "num_layers": 2, "num_heads": 2},
    "warmup": {"enabled": False},
    "weights": {"n_examples": 8, "learner": {"epochs": 1, "batch_size": 8, "mlp_hidden": 16, "init_keep_logit": 8.0, "lr": 1e-9}},
    "curriculum": {"n_clusters": 2},
    "train": {"epochs": 6, "batch_size": 4, "micro_batch_size": 2, "checkpoint_every": 1},
    "eval": {"max_new_tokens": 12, "batch_size": 4},
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    data = folder / "data.jsonl"
    write_jsonl(load_builtin("arith-cot", "train", n=16, seed=3), data)
    config = folder / "tiny.json"
    config.write_text(json.dumps(TINY))
    return folder, data, config


def _args(data, config, out, *extra):
    return ["distill", "--data", str(data), "--config", str(config), "--out", str(out), "--allow-degenerate", "--quiet", *extra]


@pytest.fixture(scope="module")
def finished_run(inputs):
    folder, data, config = inputs
    out = folder / "run"
    assert main(_args(data, config, out)) == 0
    return out


@pytest.mark.slow  # a whole kpod distill run
def test_distill_writes_report_student_and_test_split(finished_run, inputs):
    report = json.loads((finished_run / "report.json").read_text())
    for key in ("preset", "method", "seed", "test_accuracy", "n_test", "timings", "config", "versions", "machine"):
        assert key in report
    assert report["preset"] == "quick" and report["method"] == "kpod" and report["seed"] == 0
    assert 0.0 <= report["test_accuracy"] <= 1.0 and report["n_test"] >= 1
    assert "almost no token is masked" in report["weights"]["degenerate"]  # the report says so
    test_lines = (finished_run / "data" / "test.jsonl").read_text().splitlines()
    assert len(test_lines) == report["n_test"]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(finished_run / "student")
    tok = AutoTokenizer.from_pretrained(finished_run / "student")
    assert model.config.model_type == "llama" and tok.eos_token == "<eos>"
    assert (finished_run / "student" / "model.safetensors").is_file()
    assert (finished_run / "report.md").read_text().startswith("# kpod distill")
    assert (finished_run / "plots" / "loss.png").is_file()


@pytest.mark.slow  # a whole kpod distill run, about 40 s
def test_the_smoke_preset_runs_every_stage_on_the_built_in_data(tmp_path):
    out = tmp_path / "smoke"
    assert main(["distill", "--preset", "smoke", "--out", str(out), "--threads", "1", "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["preset"] == "smoke" and report["n_test"] == 100 and report["optimizer_steps"] == 150
    assert report["weights"]["degenerate"] is None  # it trains on learned weights, without --allow-degenerate
    for stage in ("data", "warmup", "weights", "schedule", "train", "eval"):
        assert (out / stage).is_dir(), stage


@pytest.mark.slow  # a whole kpod distill run
def test_eval_reproduces_the_reports_accuracy(finished_run, tmp_path, capsys):
    out = tmp_path / "metrics.json"
    assert main(["eval", "--run", str(finished_run), "--data", str(finished_run / "data" / "test.jsonl"), "--out", str(out), "--quiet"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    report = json.loads((finished_run / "report.json").read_text())
    assert printed == json.loads(out.read_text())
    assert printed["accuracy"] == report["test_accuracy"] and printed["n"] == report["n_test"]


@pytest.mark.slow  # a whole kpod distill run
def test_rerun_reuses_finished_stages_and_redoes_changed_ones(finished_run, inputs, tmp_path, capsys):
    _, data, config = inputs
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    assert main(_args(data, config, run)) == 0
    said = capsys.readouterr().out
    assert "[train] reusing the finished stage" in said and "[weights] reusing" in said
    changed = tmp_path / "changed.json"
    changed.write_text(json.dumps({**TINY, "train": {**TINY["train"], "lr": 1e-3}}))
    before = (run / "student" / "model.safetensors").read_bytes()
    assert main(_args(data, changed, run)) == 0
    said = capsys.readouterr().out
    assert "[train] configuration changed" in said and "[weights] reusing" in said
    assert (run / "student" / "model.safetensors").read_bytes() != before


def _wait_for_checkpoint(folder: Path, proc: subprocess.Popen, timeout: float = 120.0) -> int:
    state = folder / "train" / "checkpoint" / "state.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if state.is_file():
            try:
                step = json.loads(state.read_text())["step"]
            except (json.JSONDecodeError, KeyError, OSError):
                step = 0
            if step >= 2:
                return step
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before it could be interrupted:\n{proc.stderr.read()}")
        time.sleep(0.02)
    raise AssertionError("no checkpoint appeared")


@pytest.mark.slow  # a whole kpod distill run
def test_resume_after_sigkill_gives_bitwise_the_same_student(finished_run, inputs, tmp_path):
    _, data, config = inputs
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "kpod_ops.cli", *_args(data, config, out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        step = _wait_for_checkpoint(out, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    total = json.loads((finished_run / "train" / "stage.json").read_text())["steps"]
    assert step < total and not (out / "train" / "stage.json").exists()  # killed in the middle of training
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "resuming from the checkpoint" in done.stdout
    assert json.loads((out / "train" / "stage.json").read_text())["resumed_at_step"] >= step
    assert (out / "student" / "model.safetensors").read_bytes() == (finished_run / "student" / "model.safetensors").read_bytes()


def _fails(argv, capsys, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("kpod: error:"), err
    for needle in needles:
        assert needle in err, err
    return err


def test_bad_inputs_give_a_clear_error_and_write_nothing(inputs, tmp_path, capsys):
    _, data, config = inputs
    out = tmp_path / "out"
    _fails(_args(tmp_path / "missing.jsonl", config, out), capsys, "--data", "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(data.read_text().splitlines()[0] + "\n{not json\n")
    _fails(_args(bad, config, out), capsys, "bad.jsonl:2", "invalid JSON")
    not_model = tmp_path / "not_a_model"
    not_model.mkdir()
    _fails(_args(data, config, out, "--student", str(not_model)), capsys, "--student", "config.json")
    _fails(["distill", "--preset", "huge", "--out", str(out)], capsys, "--preset", "quick")
    _fails(["distill", "--method", "magic", "--out", str(out)], capsys, "--method", "standard")
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({"train": {"epochz": 3}}))
    _fails(["distill", "--config", str(unknown), "--out", str(out)], capsys, "epochz")
    assert not out.exists()
    a_file = tmp_path / "file"
    a_file.write_text("x")
    _fails(_args(data, config, a_file / "sub"), capsys, "--out", "writable")
    _fails(["eval", "--run", str(tmp_path), "--data", str(data)], capsys, "--run", "report.json")


@pytest.mark.slow  # a whole kpod distill run
def test_degenerate_weights_stop_the_run_unless_allowed(inputs, tmp_path, capsys):
    _, data, config = inputs
    out = tmp_path / "degenerate"
    argv = [a for a in _args(data, config, out) if a != "--allow-degenerate"]
    _fails(argv, capsys, "degenerate", "--allow-degenerate")
    assert (out / "data" / "stage.json").is_file()  # what was done is kept
    assert not (out / "weights" / "stage.json").exists() and not (out / "report.json").exists()


@pytest.mark.slow  # a whole kpod distill run
def test_mask_learner_restarts_are_reported_and_the_kept_one_is_used(inputs, tmp_path):
    folder, data, _ = inputs
    config = tmp_path / "restarts.json"
    config.write_text(json.dumps({**TINY, "weights": {**TINY["weights"], "restarts": 2}}))
    out = tmp_path / "restarts"
    assert main(_args(data, config, out)) == 0
    report = json.loads((out / "report.json").read_text())
    restarts = report["weights"]["restarts"]
    assert [r["seed"] for r in restarts] == [0, 100_003] and sum(r["chosen"] for r in restarts) == 1
    assert all({"val_objective", "keypoint_auc", "kept_keypoint_share", "degenerate"} <= set(r) for r in restarts)
    assert "mask learner restarts (chosen: the lowest validation objective" in (out / "report.md").read_text()
    assert len(json.loads((out / "weights" / "restarts.json").read_text())) == 2  # each restart's history
    from kpod_ops.weighting import load_token_weights

    chosen = next(r for r in restarts if r["chosen"])  # every restart's weights are kept, the chosen one's as used
    kept = load_token_weights(out / "weights" / chosen["weights_file"])
    used = load_token_weights(out / "weights" / "token_weights.npz")
    assert kept.keys() == used.keys() and all(np.array_equal(kept[k], used[k]) for k in used)
    assert all((out / "weights" / r["weights_file"]).is_file() for r in restarts)


def test_help_lists_every_option_with_its_default(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["distill", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--preset", "--out", "--method", "--seed", "--config", "--student", "--data", "--precision", "--allow-degenerate"):
        assert option in text
    assert "default: auto" in text and "no-diversity" in text
    text = " ".join(text.split())  # help lines wrap with the terminal width
    assert "(default: None)" not in text and "(default: False)" not in text  # options without a default say what happens
    assert text.count("default: the preset's, fp32") == 1 and text.count("default: torch's choice") == 1


def test_version_and_compare_help_say_what_they_do(capsys):
    import kpod_ops

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"kpod {kpod_ops.__version__}"
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "paired t 95 % interval" in text and "sign-flip" in text and "compare.json" in text


def test_eval_help_states_the_threads_default_once(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: None)" not in text and text.count("default: torch's choice") == 1


def test_the_default_preset_follows_the_gpu(monkeypatch, capsys):
    from kpod_ops import cli

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli.default_preset() == "quick"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert cli.default_preset() == "smollm2-gsm"
    assert "--preset auto: smollm2-gsm" in capsys.readouterr().out


# ------------------------------------------------------------------------ a user's own data file
NAMES = ["Carlos", "Natalia", "Weng", "Betty", "Julie", "James", "Albert", "Mark"]


def _users_file(path: Path, n: int = 40, newline: str = "\r\n") -> Path:
    """GSM8K-style records as users have them: no ids, '#### n' endings without an answer field, CRLF;
    every tenth record's rationale ends on another answer than its answer field."""
    rows = []
    for i in range(n):
        name, a, b = NAMES[i % len(NAMES)], 10 + i, 2 + i % 5
        row = {"question": f"{name} has {a} marbles and buys {b} bags of 3 more. How many marbles does {name} have?",
               "rationale": f"{name} buys {b} * 3 = {3 * b} marbles.\n{name} has {a} + {3 * b} = {a + 3 * b} marbles.\n#### {a + 3 * b}"}
        if i % 10 == 0:
            row["rationale"] = row["rationale"].replace(f"#### {a + 3 * b}", "So the answer is 7.")
            row["answer"] = str(a + 3 * b)
        rows.append(json.dumps(row))
    path.write_bytes((newline.join(rows) + newline).encode())
    return path


def test_a_users_file_is_read_counted_and_checked_against_the_builtin_tokenizer(tmp_path):
    from kpod_ops.models import tiny_tokenizer
    from kpod_ops.pipeline.data import describe_data, make_splits

    # the sections make_splits and describe_data read, as the quick preset has them with --data
    config = {"data": {"source": str(_users_file(tmp_path / "mine.jsonl")), "n_train": 2000, "n_val": 200, "n_test": 1000,
                       "test_percent": 20, "val_percent": 10}, "student": {"kind": "tiny"}}
    splits = make_splits(config["data"])
    assert sum(splits.counts().values()) == 40
    assert splits.read["n_read"] == 40 and splits.read["n_disagreements"] == 4 and splits.read["n_filtered"] == 0
    said: list[str] = []
    info = describe_data(splits, tiny_tokenizer(), config, said.append)
    assert "[data] 4 of 40 rationales end on another answer than their answer field" in said[0]
    assert "--filter-wrong-answers leaves them out" in said[0]
    vocab = info["vocabulary"]
    assert {w for w, _ in vocab["top"]} == set(NAMES) and vocab["oov_word_share"] == 0.2  # the names, 20 % of the words
    assert said[1].startswith("[data] warning: ") and "--student DIR" in said[1]
    assert info["read"] == splits.read and json.loads(json.dumps(info)) == info  # goes into report.json as it is
    config["data"]["filter_wrong_answers"] = True
    kept = make_splits(config["data"])
    assert sum(kept.counts().values()) == 36 and kept.read["n_filtered"] == 4
    said = []
    describe_data(kept, tiny_tokenizer(), config, said.append)
    assert "left out (data.filter_wrong_answers)" in said[0]
    own = config | {"student": {"kind": "dir"}}  # a student with its own tokenizer: no vocabulary check
    said = []
    assert describe_data(kept, tiny_tokenizer(), own, said.append)["vocabulary"] is None and len(said) == 1


def test_calculator_annotations_are_counted_and_stripped_on_request(tmp_path, capsys):
    from kpod_ops.pipeline.data import describe_data, make_splits

    rows = [{"question": f"Sam has {a} boxes of 3. How many?", "rationale": f"He has {a}*3 = <<{a}*3={3 * a}>>{3 * a}.\n#### {3 * a}"}
            for a in range(2, 42)]
    path = tmp_path / "gsm.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    section = {"source": str(path), "n_train": 100, "n_val": 10, "n_test": 100, "test_percent": 20, "val_percent": 10}
    config = {"data": section, "student": {"kind": "dir"}}
    splits = make_splits(section)
    assert splits.read["n_calculator_annotations"] == 40 and "<<" in splits.train[0].rationale
    said: list[str] = []
    describe_data(splits, None, config, said.append)
    assert said == ["[data] 40 of 40 rationales carry calculator annotations (<<48/2=24>>), trained on as they are; "
                    "--strip-calculator removes them"]
    stripped = make_splits(section | {"strip_calculator": True})
    assert stripped.read["n_calculator_annotations"] == 0 and "<<" not in stripped.train[0].rationale
    said = []
    describe_data(stripped, None, config, said.append)
    assert said == []
    _fails(["distill", "--preset", "quick", "--strip-calculator", "--out", str(tmp_path / "o")], capsys,
           "--strip-calculator", "a --data file", "'arith-cot'")


def test_filter_wrong_answers_needs_a_data_file(tmp_path, capsys):
    _fails(["distill", "--preset", "quick", "--filter-wrong-answers", "--out", str(tmp_path / "o")], capsys,
           "--filter-wrong-answers", "a --data file", "'arith-cot'")
    assert not (tmp_path / "o").exists()


@pytest.mark.slow  # a whole kpod distill run
def test_report_says_what_the_data_held(finished_run):
    data = json.loads((finished_run / "report.json").read_text())["data"]
    assert data["read"]["n_read"] == 16 and data["read"]["n_disagreements"] == 0
    assert data["vocabulary"]["n_oov_words"] == 0 and data["vocabulary"]["warning"] is None
    assert "out of the built-in tokenizer's vocabulary" in (finished_run / "report.md").read_text()


@pytest.fixture(scope="module")
def saved_student_run(tmp_path_factory) -> Path:
    """What `kpod eval --run` reads, without a whole distill run: a tiny student, report.json, a test split."""
    from kpod_ops.models import tiny_student, tiny_tokenizer

    run = tmp_path_factory.mktemp("saved_run")
    tok = tiny_tokenizer()
    tiny_student(tok, hidden_size=32, num_layers=1, num_heads=2).save_pretrained(run / "student")
    tok.save_pretrained(run / "student")
    (run / "report.json").write_text(json.dumps({"config": {"eval": {"max_new_tokens": 4, "batch_size": 4},
                                                            "data": {"step_rule": "auto"}}}))
    (run / "data").mkdir()
    write_jsonl(load_builtin("arith-cot", "test", n=6, seed=0), run / "data" / "test.jsonl")
    return run


def test_no_progress_bars_when_the_output_is_not_a_terminal(saved_student_run):
    """Output to a pipe or a log file: neither kpod's bars nor transformers' own ("Loading weights")."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "kpod_ops.cli", "eval", "--run", str(saved_student_run), "--data",
           str(saved_student_run / "data" / "test.jsonl")]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Loading weights" not in done.stderr and "it/s" not in done.stderr and "\r" not in done.stderr, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1])["n"] >= 1


def test_teach_reads_questions_as_users_have_them(tmp_path):
    """`kpod teach --data`: ids optional, answers as numbers, as GSM8K's '... #### 72' or from a '#### n' rationale."""
    from kpod_ops.commands.teach import read_questions
    from kpod_ops.data.jsonl import generated_id

    rows = [{"question": "Q1?", "answer": 72}, {"id": "b", "question": "Q2?", "answer": "Half is 24.\n#### 1,234"},
            {"question": "Q3?", "rationale": "2 + 3 = 5.\n#### 5"}, {"question": "Q4?", "answer": "The answer is 9."},
            {"question": "Q5?", "answer": " 3.5 "}]
    path = tmp_path / "q.jsonl"
    path.write_bytes("\r\n".join(json.dumps(r) for r in rows).encode() + b"\r\n")
    got = read_questions(path)
    assert [(q.id, q.answer) for q in got] == [(generated_id("Q1?", ""), "72"), ("b", "1234"),
                                               (generated_id("Q3?", "2 + 3 = 5.\n#### 5"), "5"), (got[3].id, "9"), (got[4].id, "3.5")]
    path.write_text(json.dumps({"question": "Q?", "rationale": "He has 5."}) + "\n")
    with pytest.raises(KPODInputError, match=r"q.jsonl:1: field 'answer': .*got nothing \(missing\), and field 'rationale' "
                                             r"does not end with an answer marker"):
        read_questions(path)
    path.write_text(json.dumps({"question": "Q?", "answer": "#### none"}) + "\n")
    with pytest.raises(KPODInputError, match=r"q.jsonl:1: field 'answer': expected a number after its answer marker"):
        read_questions(path)


def test_teach_says_how_its_output_fares_with_the_builtin_tokenizer():
    from kpod_ops.commands.teach import builtin_vocabulary
    from kpod_ops.data import CoTExample

    assert builtin_vocabulary([]) == (None, None)
    known, advice = builtin_vocabulary(load_builtin("arith-cot", n=5, seed=1))
    assert known["n_oov_words"] == 0 and advice is None
    names = [CoTExample(f"q{i}", f"{n} has 4 apples.", f"{n} eats 1, so 4 - 1 = 3.", "3") for i, n in enumerate(NAMES)]
    figures, advice = builtin_vocabulary(names)
    assert {w for w, _ in figures["top"]} == {*NAMES, "eats"} and "--student DIR" in advice


@pytest.mark.slow  # a whole kpod distill run
def test_the_data_is_described_before_the_warm_up(inputs, tmp_path, capsys):
    _, data, _ = inputs
    config = tmp_path / "warm.json"
    config.write_text(json.dumps({**TINY, "warmup": {"enabled": True, "n_texts": 8, "epochs": 1, "batch_size": 4}}))
    capsys.readouterr()
    assert main(["distill", "--data", str(data), "--config", str(config), "--out", str(tmp_path / "run"),
                 "--allow-degenerate"]) == 0
    said = capsys.readouterr().out
    # a vocabulary warning must not wait for the warm-up's minutes
    assert "[data] built-in tokenizer" in said and "[warmup]" in said
    assert said.index("[data] built-in tokenizer") < said.index("[warmup]")
