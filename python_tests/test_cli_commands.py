"""`kpod teach`, `kpod weights`, `kpod schedule` and `kpod bench` on tiny models built in code:
what each writes and prints, and the bad inputs (one `kpod: error:` line, exit status 2)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kpod_ops.cli import main
from kpod_ops.commands.teach import Question, judge, prompt_ids
from kpod_ops.data import load_builtin, read_jsonl, tokenize_examples, write_jsonl
from kpod_ops.errors import KPODInputError
from kpod_ops.models import tiny_student, tiny_tokenizer

ROOT = Path(__file__).resolve().parents[1]
# The test teacher's chat template ends its generation prompt with " 7": the untrained tiny model
# repeats the last token it sees, so it answers " 7 7 7" to every question (right when the gold is 7).
SEVEN = "{% for m in messages %}{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}\nA: 7{% endif %}"


def _error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("kpod: error: "), err
    return err[0]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    """A tiny random Llama-style causal LM and its tokenizer, saved as a Hugging Face folder."""
    folder = tmp_path_factory.mktemp("teacher")
    tok = tiny_tokenizer()
    model = tiny_student(tok, hidden_size=32, num_layers=2, num_heads=2, seed=0)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def chat_teacher(teacher, tmp_path_factory) -> Path:
    """The same model with the " 7" chat template."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path_factory.mktemp("chat_teacher")
    tok = AutoTokenizer.from_pretrained(teacher)
    tok.chat_template = SEVEN
    tok.save_pretrained(folder)
    AutoModelForCausalLM.from_pretrained(teacher).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def questions(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("q") / "questions.jsonl"
    rows = [{"id": f"q{i}", "question": f"What is {i} plus 7?", "answer": 7 if i % 2 == 0 else "8"} for i in range(6)]
    rows[1]["rationale"] = "ignored: the teacher writes its own"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ----------------------------------------------------------------------------------------- teach
def test_teach_keeps_right_answers_filters_wrong_ones_and_writes_distill_data(chat_teacher, questions, tmp_path, capsys):
    out = tmp_path / "taught.jsonl"
    argv = ["teach", "--model", str(chat_teacher), "--data", str(questions), "--out", str(out), "--max-new-tokens", "3",
            "--batch-size", "4", "--quiet"]
    assert main(argv) == 0  # the untrained model never says EOS: every generation runs into the limit
    assert "asked 6, kept 0" in capsys.readouterr().out
    assert json.loads(out.with_suffix(".summary.json").read_text())["filtered_by_reason"] == {"wrong answer": 3, "unfinished": 3}
    assert main([*argv, "--keep-unfinished"]) == 0
    assert "asked 6, kept 3" in capsys.readouterr().out
    kept = list(read_jsonl(out))  # the project's reader: what kpod distill --data reads
    assert [ex.id for ex in kept] == ["q0", "q2", "q4"]
    assert all(ex.answer == "7" and ex.rationale == "7 7 7" for ex in kept)
    summary = json.loads(out.with_suffix(".summary.json").read_text())
    assert summary["n_asked"] == 6 and summary["n_kept"] == 3 and summary["teacher_accuracy"] == 0.5
    assert summary["filtered_by_reason"] == {"wrong answer": 3}
    rejected = [json.loads(line) for line in out.with_suffix(".rejected.jsonl").read_text().splitlines()]
    assert [(r["id"], r["predicted"], r["gold"]) for r in rejected] == [("q1", "7", "8"), ("q3", "7", "8"), ("q5", "7", "8")]


def test_teach_plain_template_counts_generations_without_an_answer(teacher, questions, tmp_path, capsys):
    out = tmp_path / "plain.jsonl"
    assert main(["teach", "--model", str(teacher), "--data", str(questions), "--out", str(out), "--max-new-tokens", "4",
                 "--n", "4", "--quiet"]) == 0
    summary = json.loads(out.with_suffix(".summary.json").read_text())
    # the plain prompt ends with a newline, which the untrained model repeats: no number, nothing kept
    assert summary["n_asked"] == 4 and summary["n_kept"] == 0 and summary["filtered_by_reason"] == {"no answer": 4}
    assert out.read_text() == ""


def test_teach_sampling_is_seeded(chat_teacher, questions, tmp_path, capsys):
    texts = []
    for name in ("a", "b", "c"):
        out = tmp_path / f"{name}.jsonl"
        seed = "2" if name == "c" else "1"
        assert main(["teach", "--model", str(chat_teacher), "--data", str(questions), "--out", str(out), "--max-new-tokens", "6",
                     "--sample", "--temperature", "50", "--seed", seed, "--quiet"]) == 0
        rows = out.with_suffix(".rejected.jsonl").read_text().splitlines() + out.read_text().splitlines()
        texts.append(sorted(rows))
    assert texts[0] == texts[1]  # same seed, same samples
    assert texts[0] != texts[2]  # at temperature 50 the samples are nearly uniform: another seed differs
    assert all(" 7 7 7 7 7 7" not in row for row in texts[0])  # not the greedy output


def test_teach_prompt_uses_the_chat_template_when_there_is_one():
    tok = tiny_tokenizer()
    plain = tok.decode(prompt_ids("How many?", tok))
    assert plain == "Q: How many?\nA: Let's think step by step.\n"
    tok.chat_template = SEVEN
    assert tok.decode(prompt_ids("How many?", tok)) == "How many?\nLet's think step by step.A: 7"  # (jinja trims the newline after a tag)
    assert tok.decode(prompt_ids("How many?", tok, "plain")) == plain


def test_judge_splits_the_answer_sentence_off_and_filters():
    qs = [Question(k, f"q {k}", a) for k, a in (("a", "12"), ("b", "5"), ("c", "3"), ("d", "4"), ("e", "6"))]
    texts = ["3 * 4 = 12.\nSo the answer is 12.", "2 + 2 = 4.\nThe answer is 4.", "I do not know.", "The answer is 4.",
             "First 2 * 3 = 6, then 6 +"]
    result = judge(qs, texts, [True, True, True, True, False])
    assert [ex.id for ex in result.kept] == ["a"] and result.kept[0].rationale == "3 * 4 = 12."
    assert [r["reason"] for r in result.rejected] == ["wrong answer", "no answer", "no reasoning", "unfinished"]
    assert result.summary()["teacher_accuracy"] == 0.6  # a, d and e match (as kpod eval counts); only a is kept


def test_teach_bad_inputs(teacher, questions, tmp_path, capsys):
    base = ["teach", "--model", str(teacher), "--quiet"]
    out = ["--out", str(tmp_path / "o.jsonl")]
    assert "--data: expected an existing JSONL file" in _error(capsys, [*base, "--data", str(tmp_path / "nope.jsonl"), *out])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "1"}\n{"question": "q2"}\n')
    assert f"{bad}:2: field 'answer'" in _error(capsys, [*base, "--data", str(bad), *out])
    bad.write_text("{not json\n")
    assert f"{bad}:1: expected a JSON object, got invalid JSON" in _error(capsys, [*base, "--data", str(bad), *out])
    not_model = tmp_path / "empty"
    not_model.mkdir()
    assert "--model: expected a Hugging Face model directory" in _error(
        capsys, ["teach", "--model", str(not_model), "--data", str(questions), *out])
    assert "--out: expected a file in an existing writable folder" in _error(
        capsys, [*base, "--data", str(questions), "--out", str(tmp_path / "missing" / "o.jsonl")])
    assert "--out: expected a .jsonl file name" in _error(capsys, [*base, "--data", str(questions), "--out", str(tmp_path / "o.txt")])
    assert "--batch-size: expected an int >= 1, got 0" in _error(capsys, [*base, "--data", str(questions), *out, "--batch-size", "0"])
    assert "--top-p: expected a number in (0, 1]" in _error(capsys, [*base, "--data", str(questions), *out, "--sample", "--top-p", "2"])
    assert "--template: expected 'chat' only with a tokenizer that has a chat template" in _error(
        capsys, [*base, "--data", str(questions), *out, "--template", "chat"])
    assert not (tmp_path / "o.jsonl").exists()  # nothing half-written


# --------------------------------------------------------------------------------------- weights
@pytest.fixture(scope="module")
def weight_run(teacher, tmp_path_factory) -> tuple[Path, list]:
    """A run-folder layout as kpod distill writes it: student/ (tokenizer) and weights/token_weights.npz."""
    from transformers import AutoTokenizer

    from kpod_ops.weighting import save_token_weights

    run = tmp_path_factory.mktemp("run")
    tok = AutoTokenizer.from_pretrained(teacher)
    tok.save_pretrained(run / "student")
    examples = tokenize_examples(load_builtin("arith-cot", "train", n=5, seed=1), tok)
    rng = np.random.default_rng(0)
    weights = {ex.id: rng.uniform(0.0, 1.0, ex.rationale_len).astype(np.float32) for ex in examples}
    save_token_weights(run / "weights" / "token_weights.npz", weights, examples, tokenizer=tok)
    return run, examples


def test_weights_prints_stats_and_ascii_rationales_and_writes_html(weight_run, tmp_path, capsys):
    run, examples = weight_run
    page = tmp_path / "w.html"
    assert main(["weights", "--run", str(run), "--n", "2", "--color", "never", "--html", str(page)]) == 0
    out = capsys.readouterr().out
    assert "5 rationales" in out and "degenerate: no" in out and "kept" in out
    assert f"--- {examples[0].id}" in out and f"--- {examples[1].id}" in out and f"--- {examples[2].id}" not in out
    assert "\x1b[" not in out  # ASCII: no colour codes
    block = out.split(f"--- {examples[0].id}")[1].split("\n")[1:3]
    assert len(block[0]) == len(block[1]) and set(block[1]) <= set("0123456789")  # a digit under every character
    text = page.read_text()
    assert text.startswith("<!doctype html>") and text.count('class="kpod-weights"') == 2 and "degenerate: no" in text


def test_weights_by_id_in_colour_from_a_file(weight_run, teacher, capsys):
    run, examples = weight_run
    wanted = examples[3].id
    assert main(["weights", "--file", str(run / "weights" / "token_weights.npz"), "--tokenizer", str(teacher), "--ids", wanted,
                 "--color", "always"]) == 0
    out = capsys.readouterr().out
    assert f"--- {wanted}" in out and "\x1b[48;5;" in out and f"--- {examples[0].id}" not in out


def test_weights_flags_degenerate_weights(teacher, tmp_path, capsys):
    from transformers import AutoTokenizer

    from kpod_ops.weighting import save_token_weights

    tok = AutoTokenizer.from_pretrained(teacher)
    examples = tokenize_examples(load_builtin("arith-cot", "train", n=3, seed=1), tok)
    path = save_token_weights(tmp_path / "flat.npz", {ex.id: np.full(ex.rationale_len, 0.97, np.float32) for ex in examples},
                              examples, tokenizer=tok)
    assert main(["weights", "--file", str(path), "--tokenizer", str(teacher), "--no-terminal"]) == 0
    out = capsys.readouterr().out
    assert "DEGENERATE: almost no token is masked" in out and "degenerate: yes" in out


def test_weights_bad_inputs(weight_run, tmp_path, capsys):
    run, _ = weight_run
    assert "--run: expected a run folder with weights/token_weights.npz" in _error(capsys, ["weights", "--run", str(tmp_path)])
    assert "--run: expected a kpod distill run folder" in _error(capsys, ["weights", "--run", str(tmp_path / "none")])
    npz = str(run / "weights" / "token_weights.npz")
    assert "--tokenizer: expected the tokenizer" in _error(capsys, ["weights", "--file", npz])
    assert "--file: expected an existing token-weight file" in _error(capsys, ["weights", "--file", str(tmp_path / "x.npz"),
                                                                              "--tokenizer", "tiny"])
    assert "--ids: expected example ids" in _error(capsys, ["weights", "--run", str(run), "--ids", "nope"])
    assert "--n: expected an int >= 1" in _error(capsys, ["weights", "--run", str(run), "--n", "0"])
    assert "--html: expected a file in an existing writable folder" in _error(
        capsys, ["weights", "--run", str(run), "--html", str(tmp_path / "no" / "w.html")])
    fake = tmp_path / "fake.npz"
    fake.write_bytes(b"not a zip")
    assert "expected a token-weight file written by save_token_weights" in _error(
        capsys, ["weights", "--file", str(fake), "--tokenizer", "tiny"])


def test_weights_refuses_another_tokenizer(weight_run, tmp_path, capsys):
    from transformers import AutoTokenizer

    run, _ = weight_run
    other = AutoTokenizer.from_pretrained(run / "student")
    other.add_tokens(["zzqx"])  # one more token: another vocabulary, another fingerprint
    other.save_pretrained(tmp_path / "other")
    assert "tokenizer fingerprint differs" in _error(capsys, ["weights", "--run", str(run), "--tokenizer", str(tmp_path / "other")])


# -------------------------------------------------------------------------------------- schedule
@pytest.fixture(scope="module")
def schedule_run(tmp_path_factory) -> Path:
    """A run-folder layout with difficulty-softmax/difficulties.json and clusters/clusters.json."""
    run = tmp_path_factory.mktemp("srun")
    rng = np.random.default_rng(0)
    difficulties = {f"q{i}": rng.uniform(0.1, 2.0, 2 + i % 3).tolist() for i in range(30)}
    clusters = {f"q{i}": i % 3 for i in range(30)}
    for name, data in (("difficulty-softmax/difficulties.json", difficulties), ("clusters/clusters.json", clusters)):
        (run / name).parent.mkdir(parents=True)
        (run / name).write_text(json.dumps(data))
    return run


def test_schedule_from_a_run_prints_the_table_and_plots(schedule_run, tmp_path, capsys):
    png, js = tmp_path / "budget.png", tmp_path / "schedule.json"
    assert main(["schedule", "--run", str(schedule_run), "--epochs", "8", "--beta", "3", "--png", str(png), "--json", str(js)]) == 0
    out = capsys.readouterr().out
    assert "KPOD progressive schedule: 30 questions" in out and "T=4" in out and "beta=3.0" in out
    assert len([line for line in out.splitlines() if line[:5].strip().isdigit()]) == 5  # stages 0..T
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    state = json.loads(js.read_text())
    assert state["config"]["n_stages"] == 4 and len(state["selections"]) == 4


def test_schedule_follows_the_runs_settings_and_the_ablation(schedule_run, capsys):
    report = {"config": {"train": {"epochs": 4}, "curriculum": {"beta": 12.0, "p": 1.0, "c0_ratio": 0.5, "solver": "greedy_max",
                                                              "normalisation": "softmax"}},
              "method_settings": {"beta": 0.0, "normalisation": "softmax"}}  # as no-diversity writes it
    (schedule_run / "report.json").write_text(json.dumps(report))
    try:
        assert main(["schedule", "--run", str(schedule_run)]) == 0
        out = capsys.readouterr().out
        assert "epochs=4, T=2" in out and "beta=0.0" in out and "p=1.0" in out and "solver=greedy_max" in out
        assert main(["schedule", "--run", str(schedule_run), "--no-progressive"]) == 0
        assert "progressive=False" in capsys.readouterr().out
    finally:
        (schedule_run / "report.json").unlink()


def test_schedule_from_a_compare_seeds_shared_folder(schedule_run, tmp_path, capsys):
    import shutil

    seed = tmp_path / "seed0"
    shutil.copytree(schedule_run, seed / "shared")
    (seed / "kpod").mkdir()
    (seed / "kpod" / "report.json").write_text(json.dumps({"config": {"train": {"epochs": 10}, "curriculum": {
        "beta": 5.0, "p": 0.5, "c0_ratio": 0.3, "solver": "ftgp", "normalisation": "softmax"}}}))
    assert main(["schedule", "--run", str(seed / "kpod")]) == 0  # difficulties from the seed's shared/ folder
    assert "epochs=10, T=5" in capsys.readouterr().out
    assert main(["schedule", "--run", str(seed / "shared")]) == 0  # settings from the method run beside it
    assert "epochs=10, T=5" in capsys.readouterr().out
    plain = tmp_path / "plain"  # no report to say which normalisation: two difficulty stages are ambiguous
    shutil.copytree(schedule_run, plain)
    (plain / "difficulty-uniform").mkdir()
    (plain / "difficulty-uniform" / "difficulties.json").write_text("{}")
    assert "--normalisation: expected one to choose between difficulty-softmax, difficulty-uniform" in _error(
        capsys, ["schedule", "--run", str(plain)])
    assert main(["schedule", "--run", str(plain), "--normalisation", "softmax"]) == 0
    assert "no report.json" in capsys.readouterr().err


def test_schedule_from_data_scores_with_a_model(teacher, tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    write_jsonl(load_builtin("arith-cot", "train", n=8, seed=2), data)
    assert main(["schedule", "--data", str(data), "--model", str(teacher), "--n-clusters", "2", "--epochs", "4", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "8 questions" in out and "K=2 clusters" in out and "T=2" in out


def test_schedule_bad_inputs(schedule_run, teacher, tmp_path, capsys):
    assert "--run: expected a run folder with difficulty-" in _error(capsys, ["schedule", "--run", str(tmp_path)])
    assert "--model: expected a causal LM" in _error(capsys, ["schedule", "--data", str(tmp_path / "d.jsonl")])
    assert "--data: expected an existing JSONL file" in _error(capsys, ["schedule", "--data", str(tmp_path / "d.jsonl"),
                                                                        "--model", str(teacher)])
    assert "--solver: expected one of" in _error(capsys, ["schedule", "--run", str(schedule_run), "--solver", "magic"])
    assert "--model: expected only with --data" in _error(capsys, ["schedule", "--run", str(schedule_run), "--model", str(teacher)])
    assert "--png: expected a .png file" in _error(capsys, ["schedule", "--run", str(schedule_run), "--png", str(tmp_path / "x.jpg")])
    assert "n_epochs: expected an int >= 2" in _error(capsys, ["schedule", "--run", str(schedule_run), "--epochs", "1"])
    assert "beta: expected a finite" in _error(capsys, ["schedule", "--run", str(schedule_run), "--beta", "-1"])


def test_a_model_that_is_no_folder_names_both_ways_to_give_one(tmp_path):
    from kpod_ops.commands.models import load_causal_lm

    with pytest.raises(KPODInputError, match=r"--model: expected a Hugging Face model folder or 'smollm2' .*got tiny \(not a directory\)"):
        load_causal_lm("tiny")


# ----------------------------------------------------------------------------------------- bench
def test_bench_lists_the_benchmarks_of_this_checkout(capsys):
    assert main(["bench", "--list"]) == 0
    out = capsys.readouterr().out
    assert "bench_loss.py" in out and f"from: {ROOT / 'benchmarks'}" in out


def test_bench_runs_a_script_with_its_arguments(capfd):
    assert main(["bench", "--dir", str(ROOT / "benchmarks"), "schedule", "--help"]) == 0
    assert "Time and peak memory of building a full KPOD schedule" in capfd.readouterr().out


def test_bench_bad_inputs(tmp_path, capsys, monkeypatch):
    assert "name: expected one of loss" in _error(capsys, ["bench", "nope"])
    assert "name: expected one of loss" in _error(capsys, ["bench"])
    assert "--dir: expected a kpod_ops checkout's benchmarks/ folder" in _error(capsys, ["bench", "--dir", str(tmp_path), "loss"])
    # outside a checkout (as from a pip-installed wheel): the package's parent has no benchmarks/ either
    import kpod_ops

    fake_pkg = tmp_path / "site-packages" / "kpod_ops"
    fake_pkg.mkdir(parents=True)
    monkeypatch.setattr(kpod_ops, "__file__", str(fake_pkg / "__init__.py"))
    monkeypatch.chdir(tmp_path)
    message = _error(capsys, ["bench", "loss"])
    assert "not part of the installed package" in message and "pip install -e ." in message


def test_help_of_every_new_command_states_its_defaults(capsys):
    for name, default in (("teach", "(default: 16)"), ("weights", "(default: 3)"), ("schedule", "(default: 0)"), ("bench", "--list")):
        with pytest.raises(SystemExit) as exc:
            main([name, "--help"])
        assert exc.value.code == 0
        assert default in " ".join(capsys.readouterr().out.split())  # help lines wrap
