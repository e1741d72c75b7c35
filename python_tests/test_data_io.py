"""CoTExample, JSONL reading/validation, answers and the built-in datasets."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kpod_ops.data import (
    CoTExample,
    answers_match,
    extract_answer,
    load_builtin,
    parse_number,
    read_jsonl,
    write_jsonl,
)
from kpod_ops.data.arith import load_arith_cot
from kpod_ops.data.jsonl import generated_id
from kpod_ops.errors import KPODInputError
from kpod_ops.steps import split_steps


def _write(tmp_path, lines):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


GOOD = {"id": "a", "question": "How many?", "rationale": "2+3=5.\nThen 5*2=10.\n#### 10", "answer": "10"}


def test_read_jsonl_roundtrip_and_marker(tmp_path):
    path = _write(tmp_path, [GOOD, "", {**GOOD, "id": "b", "rationale": "So 4. Therefore, the answer is 4.", "answer": "4"}])
    got = read_jsonl(path)
    assert [e.id for e in got] == ["a", "b"]
    assert got[0].rationale == "2+3=5.\nThen 5*2=10." and got[1].rationale == "So 4."
    out = tmp_path / "out.jsonl"
    write_jsonl(got, out)
    assert read_jsonl(out) == got


def test_read_raw_gsm8k_with_field_mapping(tmp_path):
    path = _write(tmp_path, [{"question": "Q?", "answer": "Half is 48/2=<<48/2=24>>24.\n#### 24"}])
    (ex,) = read_jsonl(path, fields={"id": None, "rationale": "answer", "answer": None}, strip_calculator=True)
    assert (ex.id, ex.rationale, ex.answer) == (generated_id("Q?", "Half is 48/2=<<48/2=24>>24.\n#### 24"), "Half is 48/2=24.", "24")
    # the rationale's key is the answer key: the answer is the number after its marker, not the whole text
    assert read_jsonl(path, fields={"rationale": "answer"}, strip_calculator=True) == [ex]
    # GSM8K's own layout needs no mapping (what `kpod distill --data` reads): no rationale key, and an answer
    # that holds the rationale and ends with a marker
    assert read_jsonl(path, strip_calculator=True) == [ex]


def test_read_jsonl_names_the_cause_of_common_file_shapes(tmp_path):
    import gzip

    other = _write(tmp_path, [{"input": "Q?", "output": "2 + 2 = 4.\n#### 4"}])
    with pytest.raises(KPODInputError, match=r"field 'question'.*the record's keys are \['input', 'output'\].*GSM8K"):
        read_jsonl(other)
    pretty = tmp_path / "pretty.json"
    pretty.write_text(json.dumps([GOOD], indent=2))
    with pytest.raises(KPODInputError, match=r"pretty.json:1: .*one whole object per line"):
        read_jsonl(pretty)
    packed = tmp_path / "data.jsonl.gz"
    with gzip.open(packed, "wt") as handle:
        handle.write(json.dumps(GOOD) + "\n")
    with pytest.raises(KPODInputError, match=r"gzip file \(decompress it first"):
        read_jsonl(packed)
    nan = tmp_path / "nan.jsonl"
    nan.write_text('{"question": "q", "rationale": "1 + 1 = 2.", "answer": NaN}\n')
    with pytest.raises(KPODInputError, match=r"nan.jsonl:1: field 'answer': expected a string or a number, got nan"):
        read_jsonl(nan)
    renamed = _write(tmp_path, [{"question": "q", "rationale": "1 + 1 = 2.\n#### 2", "final_answer": "2"}])
    with pytest.raises(KPODInputError, match=r"fields: expected keys that the records of .* have, got \['final'\], in no record"):
        read_jsonl(renamed, fields={"answer": "final"})
    assert read_jsonl(renamed, fields={"answer": "final_answer"})[0].answer == "2"
    crlf = _write(tmp_path, [{"question": "Q?\r\nHow many?", "rationale": "1 + 1 = 2.\r\n2 * 3 = 6.\r\n#### 6"}])
    (ex,) = read_jsonl(crlf)
    assert (ex.question, ex.rationale, ex.answer) == ("Q?\nHow many?", "1 + 1 = 2.\n2 * 3 = 6.", "6")
    assert ex.id == generated_id("Q?\r\nHow many?", "1 + 1 = 2.\r\n2 * 3 = 6.\r\n#### 6")  # from the text as written


# A user's file as it comes: CRLF line ends, a blank line, ids on some records only, GSM8K-style
# rationales ending in "#### n" without an answer field, an answer given in the rationale's own words.
USER_RECORDS = [
    {"question": "Carlos has 40 apples. He eats 6. How many are left?", "rationale": "He eats 6, so 40 - 6 = 34.\n#### 34"},
    {"id": "q-2", "question": "Mia reads 12 pages a day for 3 days. How many pages?", "rationale": "12 * 3 = 36.\nSo the answer is 36.",
     "answer": "36"},
    {"question": "A box holds 1,200 pens. Half are red. How many red pens?", "rationale": "1,200 / 2 = 600 red pens.\n#### 600"},
    {"question": "Tom pays $3 for 2 pens. How much for 6 pens?", "rationale": "6 / 2 = 3 groups, 3 * 3 = 9.\nSo the answer is 46.",
     "answer": "999"},
]


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_a_users_file_without_ids_or_answers(tmp_path, newline):
    path = tmp_path / "mine.jsonl"
    lines = [json.dumps(r) for r in USER_RECORDS]
    path.write_bytes(newline.join([*lines[:2], "", *lines[2:]]).encode() + newline.encode())
    got = read_jsonl(path)
    assert [e.answer for e in got] == ["34", "36", "600", "999"]
    assert got[0].rationale == "He eats 6, so 40 - 6 = 34." and got[2].rationale == "1,200 / 2 = 600 red pens."
    assert got[1].id == "q-2" and got[0].id == generated_id(USER_RECORDS[0]["question"], USER_RECORDS[0]["rationale"])
    assert re.fullmatch(r"ex-[0-9a-f]{12}", got[3].id)
    # the rationale that ends on 46 under an answer field of 999: trained on unless filtered, counted either way
    assert got.disagreements == [(got[3].id, "46", "999")] and got.filtered == []
    assert "1 whose rationale disagrees with the answer field (0 of them filtered)" in got.report()
    assert f"{got[3].id!r} (46 vs 999)" in got.report()
    clean = read_jsonl(path, filter_wrong_answers=True)
    assert [e.id for e in clean] == [e.id for e in got[:3]] and clean.filtered == [got[3].id]
    assert clean.disagreements == got.disagreements


def test_generated_ids_follow_the_content_not_the_line(tmp_path):
    first = read_jsonl(_write(tmp_path, USER_RECORDS))
    moved = read_jsonl(_write(tmp_path, [GOOD, *reversed(USER_RECORDS)]))
    assert {e.id: e for e in first} == {e.id: e for e in moved if e.id != "a"}
    other = {**USER_RECORDS[0], "rationale": "40 - 6 = 34.\n#### 34"}  # a second rationale for the same question
    ids = [e.id for e in read_jsonl(_write(tmp_path, [USER_RECORDS[0], other]))]
    assert len(set(ids)) == 2
    with pytest.raises(KPODInputError, match=r"data.jsonl:2: field 'id': expected a unique id, .*the same record twice"):
        read_jsonl(_write(tmp_path, [USER_RECORDS[0], USER_RECORDS[0]]))


def test_a_missing_answer_needs_a_final_marker(tmp_path):
    no_marker = {"question": "How many?", "rationale": "He has 5 apples."}
    with pytest.raises(KPODInputError, match=r"data.jsonl:1: field 'answer' missing and field 'rationale': "
                                              r"expected an answer marker"):
        read_jsonl(_write(tmp_path, [no_marker]))
    inside = {"question": "How many?", "rationale": "#### 5 is not the end.\nHe has 6."}
    with pytest.raises(KPODInputError, match="answer marker"):
        read_jsonl(_write(tmp_path, [inside]))


def test_read_jsonl_takes_numbers_as_ids_and_answers(tmp_path):
    """Files often write ids and answers as JSON numbers: they read as the number's text."""
    rows = [{"id": 7, "question": "How many?", "rationale": "He has 5 + 5 = 10.", "answer": 10},
            {"id": 8, "question": "How much?", "rationale": "It costs 2.5 each.", "answer": 2.5}]
    got = read_jsonl(_write(tmp_path, rows))
    assert [(e.id, e.answer) for e in got] == [("7", "10"), ("8", "2.5")] and not got.disagreements
    with pytest.raises(KPODInputError, match="field 'answer': expected a string or a number, got bool"):
        read_jsonl(_write(tmp_path, [{**rows[0], "answer": True}]))


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"id": "x", "question": ', r"data.jsonl:2: expected a JSON object, got invalid JSON"),
        ("[1, 2]", r"data.jsonl:2: expected a JSON object, got list"),
        (
            {"id": "x", "rationale": "r", "answer": "1"},
            r"data.jsonl:2: field 'question': expected a string, got nothing",
        ),
        ({**GOOD, "id": "x", "answer": [10]}, r"data.jsonl:2: field 'answer': expected a string or a number, got list"),
        ({**GOOD, "id": "x", "rationale": "   "}, r"data.jsonl:2: field 'rationale': expected a non-empty string"),
        (
            {**GOOD, "id": "x", "rationale": "#### 10"},
            r"data.jsonl:2: field 'rationale': expected a non-empty string",
        ),
        (GOOD, r"data.jsonl:2: field 'id': expected a unique id, got 'a' again \(first on line 1\)"),
    ],
)
def test_read_jsonl_errors_name_file_and_line(tmp_path, line, message):
    path = _write(tmp_path, [GOOD, line])
    with pytest.raises(KPODInputError, match=message):
        read_jsonl(path)
    got = read_jsonl(path, on_error="skip")
    assert [e.id for e in got] == ["a"] and [s[0] for s in got.skipped] == [2]


def test_read_jsonl_bad_arguments(tmp_path):
    with pytest.raises(KPODInputError, match="path: expected an existing JSONL file"):
        read_jsonl(tmp_path / "missing.jsonl")
    path = _write(tmp_path, [GOOD])
    with pytest.raises(KPODInputError, match="on_error"):
        read_jsonl(path, on_error="ignore")
    with pytest.raises(KPODInputError, match="fields"):
        read_jsonl(path, fields={"solution": "x"})
    with pytest.raises(KPODInputError, match="answer marker"):
        read_jsonl(_write(tmp_path, [{**GOOD, "rationale": "no marker"}]), fields={"answer": None})


def test_filter_wrong_answers(tmp_path):
    wrong = {**GOOD, "id": "w", "rationale": "2+3=5.\n#### 5"}
    no_marker = {**GOOD, "id": "n", "rationale": "5*2 = 10 apples."}
    got = read_jsonl(_write(tmp_path, [GOOD, wrong, no_marker]), filter_wrong_answers=True)
    assert [e.id for e in got] == ["a", "n"] and got.filtered == ["w"]
    assert len(read_jsonl(_write(tmp_path, [GOOD, wrong]))) == 2  # off by default


def test_cot_example_validation():
    with pytest.raises(KPODInputError, match="CoTExample.answer: expected a str, got int"):
        CoTExample("a", "q", "r", 3)
    with pytest.raises(KPODInputError, match="CoTExample.rationale: expected a non-empty string"):
        CoTExample("a", "q", " ", "3")


def test_answers():
    assert extract_answer("So 3+4=7.\n#### 1,234") == "1234"
    assert extract_answer("Therefore, the answer is $1.50.") == "1.5"
    assert extract_answer("left 10-5 then -3 is wrong; it is 2") == "2"
    assert extract_answer("the value is -5.") == "-5"
    assert extract_answer("no number") is None
    assert answers_match("1,234", "1234.0") and answers_match(" 72 ", 72) and not answers_match("71", "72")
    assert not answers_match(None, "1") and answers_match("yes", "Yes")
    assert parse_number("$1,000.50") == 1000.5 and parse_number("abc") is None and parse_number(True) is None
    # a fraction is one number (it used to read as its numerator), a Unicode minus a minus
    assert extract_answer("#### 3/4") == "3/4" and extract_answer("So the answer is 3/4.") == "3/4"
    assert extract_answer("So the answer is \u22123.") == "-3" and extract_answer("48/2 = 24") == "24"
    assert parse_number("3/4") == 0.75 and parse_number("-1/2") == -0.5 and parse_number("1/0") is None
    assert answers_match("0.75", "3/4") and answers_match("6/8", "3/4") and not answers_match("3", "3/4")


def _check_disjoint_and_deterministic(name, n):
    train = load_builtin(name, "train", n=n, seed=1)
    test = load_builtin(name, "test", n=n, seed=1)
    assert len(train) == len(test) == n
    assert not {e.question for e in train} & {e.question for e in test}
    assert len({e.question for e in train}) == n
    assert load_builtin(name, "train", n=n, seed=1) == train
    assert load_builtin(name, "train", n=n, seed=2) != train
    return train


def _check_arith_problem(ex, max_steps: int) -> list[str]:
    """An arith-cot problem is consistent: one step per line, each step's result feeding the next, the answer the
    last result, every number of the question a start, an operand or a distractor. Returns the rationale's lines."""
    lines = ex.rationale.split("\n")
    assert 2 <= len(lines) <= max_steps and split_steps(ex.rationale) == [lines[0]] + ["\n" + s for s in lines[1:]]
    cur = ex.metadata["start"]
    for line, result in zip(lines, ex.metadata["step_results"]):
        a, op, b, c = re.search(r"(\d+) ([-+*/]) (\d+) = (\d+)", line).groups()
        assert int(a) == cur and eval(f"{a} {op} {b}") == int(c) == result  # each step feeds the next
        assert int(b) < 100 and int(c) < 1000
        cur = int(c)
    assert str(cur) == ex.answer
    question_numbers = [int(x) for x in re.findall(r"\d+", ex.question)]
    assert sorted(question_numbers) == sorted([ex.metadata["start"], *ex.metadata["operands"], *ex.metadata["distractors"]])
    return lines


def test_arith_cot():
    train = _check_disjoint_and_deterministic("arith-cot", 300)
    assert load_builtin("arith-cot", "train", n=50, seed=1) == train[:50]  # a larger n extends a smaller one
    for ex in train:
        _check_arith_problem(ex, max_steps=5)
        assert 1 <= len(ex.metadata["distractors"]) <= 2


def _digest(examples) -> str:
    import hashlib

    return hashlib.sha256(repr([(e.id, e.question, e.rationale, e.answer, e.metadata) for e in examples]).encode()).hexdigest()[:16]


@pytest.mark.parametrize(("kwargs", "split", "digest"), [
    ({}, "train", "c96cde5aa69b13cb"), ({}, "test", "0ca9f0af32955961"),
    ({"max_steps": 3, "max_distractors": 1}, "train", "870f3a7b119b4825"),  # the quick preset's data
    ({"max_steps": 3, "max_distractors": 1}, "test", "5a6dd98c29c1bc58"),
    ({"max_steps": 5, "max_distractors": 3}, "train", "dc014f288ce4ad79"),
])
def test_arith_cot_plain_problems_never_change(kwargs, split, digest):
    # every finished run and study of the built-in data depends on these problems: a change to the generator
    # (a new option's random draws included) must leave them as they were
    assert _digest(load_arith_cot(split, 300, seed=7, **kwargs)) == digest


def test_arith_cot_varied_wording():
    from kpod_ops.models import tiny_tokenizer

    train = load_arith_cot("train", 200, seed=1, max_steps=4, max_distractors=2, wording="varied")
    test = load_arith_cot("test", 200, seed=1, max_steps=4, max_distractors=2, wording="varied")
    assert not {e.question for e in train} & {e.question for e in test}
    assert load_arith_cot("train", 200, seed=1, max_steps=4, max_distractors=2, wording="varied") == train
    plain = load_arith_cot("train", 200, seed=1, max_steps=4, max_distractors=2)
    tok = tiny_tokenizer()
    words = set()
    for ex in train:
        for line in _check_arith_problem(ex, max_steps=4):
            # the step's place and time come from the question: the student can copy them, and they never decide the answer
            context = re.match(r"[A-Za-z ]+, ((?:at|on) [a-z ]+?), ", line).group(1)
            assert context in ex.question or context.capitalize() in ex.question
        words |= set(re.findall(r"[A-Za-z]+", ex.question + " " + ex.rationale))
    # every word is one token of the tiny student (no word spelt out letter by letter)
    assert all(len(tok(" " + w, add_special_tokens=False)["input_ids"]) == 1 for w in words)
    # about twice the words per step around the same keypoints
    n_words = lambda exs: sum(len(re.findall(r"[A-Za-z]+", e.rationale)) for e in exs) / sum(e.rationale.count("\n") + 1 for e in exs)  # noqa: E731
    assert n_words(train) > 1.6 * n_words(plain)
    with pytest.raises(KPODInputError, match="wording: expected one of"):
        load_arith_cot("train", 5, wording="fancy")
    # load_builtin is the public way to the variants
    assert load_builtin("arith-cot", "train", n=200, seed=1, max_steps=4, max_distractors=2, wording="varied") == train
    with pytest.raises(KPODInputError, match="wording: expected options of 'arith-cot' only"):
        load_builtin("gsm-symbolic", n=5, wording="varied")
    with pytest.raises(KPODInputError, match="steps: expected arith-cot's options"):
        load_builtin("arith-cot", n=5, steps=3)


def test_arith_text_is_warm_up_text_without_worked_solutions():
    texts = load_builtin("arith-text", n=200, seed=1)
    assert isinstance(texts, list) and len(texts) == 200 and all(isinstance(t, str) and t for t in texts)
    assert texts == load_builtin("arith-text", n=200, seed=1) and texts != load_builtin("arith-text", n=200, seed=2)
    joined = "\n".join(texts)
    # no task question (the read-back questions ask for a number stated in the text, never a computed one)
    assert "answer is" not in joined and "step by step" not in joined and "have now?" not in joined
    assert re.search(r"\d+ \+ \d+ = \d+", joined)  # arithmetic facts are there
    # no rationale line of the task ("..., so he has 17 + 4 = 21 apples.")
    assert not re.search(r"so (he|she) has \d+ [-+*/] \d+ = \d+", joined)
    questions = load_builtin("arith-cot", "train", n=400, seed=1) + load_builtin("arith-cot", "test", n=400, seed=1)
    assert not any(ex.question in joined for ex in questions)


def test_gsm_symbolic():
    train = _check_disjoint_and_deterministic("gsm-symbolic", 60)
    for ex in train:
        assert "####" not in ex.rationale and parse_number(ex.answer) is not None
        assert not ex.question.endswith("Do not include units.")


def test_gsm8k_fixture():
    train, test = load_builtin("gsm8k-fixture"), load_builtin("gsm8k-fixture", "test")
    assert len(train) >= 20 and len(test) >= 6 and not {e.id for e in train} & {e.id for e in test}
    for ex in train + test:
        assert "<<" not in ex.rationale and answers_match(extract_answer(ex.rationale), ex.answer)
    assert load_builtin("gsm8k-fixture", n=5, seed=3) == load_builtin("gsm8k-fixture", seed=3)[:5]
    with pytest.raises(KPODInputError, match="n: expected at most"):
        load_builtin("gsm8k-fixture", "test", n=100)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"name": "gsm8k"}, "name"),
        ({"name": "arith-cot", "split": "dev"}, "split"),
        ({"name": "arith-cot", "n": 0}, "n: expected a positive int"),
    ],
)
def test_load_builtin_bad_input(kwargs, message):
    with pytest.raises(KPODInputError, match=message):
        load_builtin(**kwargs)


def test_read_jsonl_bad_utf8_names_file_and_line_and_skips(tmp_path):
    path = tmp_path / "data.jsonl"
    bad = json.dumps({**GOOD, "id": "b"}).encode().replace(b"How", b"H\xffw")
    path.write_bytes(json.dumps(GOOD).encode() + b"\n" + bad + b"\n" + json.dumps({**GOOD, "id": "c"}).encode() + b"\n")
    with pytest.raises(KPODInputError, match=r"data.jsonl:2: expected UTF-8 text, got byte 0xff"):
        read_jsonl(path)
    got = read_jsonl(path, on_error="skip")
    assert [e.id for e in got] == ["a", "c"] and [s[0] for s in got.skipped] == [2]


def test_read_jsonl_accepts_a_byte_order_mark(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD).encode() + b"\n")
    assert [e.id for e in read_jsonl(path)] == ["a"]


@pytest.mark.parametrize("bad", [3, None, ["a.jsonl"], b"a.jsonl"])
def test_read_jsonl_non_path(bad):
    with pytest.raises(KPODInputError, match="path: expected a str or os.PathLike"):
        read_jsonl(bad)


def test_read_jsonl_bad_fields_and_markers(tmp_path):
    path = _write(tmp_path, [GOOD])
    with pytest.raises(KPODInputError, match="fields: expected a dict"):
        read_jsonl(path, fields=["question"])
    with pytest.raises(KPODInputError, match="markers: expected a sequence of non-empty strings"):
        read_jsonl(path, markers="####")


def test_read_jsonl_keeps_a_marker_inside_the_reasoning_and_reports_it(tmp_path):
    check = "Let's check if the answer is reasonable: 12 * 3 = 36.\nSo he has 36 apples."
    lines = [GOOD, {**GOOD, "id": "k", "rationale": check, "answer": "36"}]
    got = read_jsonl(_write(tmp_path, lines), filter_wrong_answers=True)
    assert [e.id for e in got] == ["a", "k"] and got[1].rationale == check
    assert got.ambiguous_markers == ["k"] and "1 with an answer marker inside the reasoning" in got.report()


def test_data_summary_shows_the_rule_each_rationale_got(tmp_path):
    from kpod_ops.data import summarize_examples

    paragraphs = "Tom buys 3 apples. Each costs $2.\n\nSo he pays $6. He also buys a pear.\n\nHe pays $7. He has $3 left."
    examples = [
        CoTExample("p", "q", paragraphs, "3"),
        CoTExample("n", "q", "Half is 48/2 = 24 clips.\nSo 48+24 = 72 clips.", "72"),
        CoTExample("s", "q", "He has 5. He eats 2.", "3"),
    ]
    summary = summarize_examples(examples)
    assert summary.rules == {"paragraph": 1, "newline": 1, "period": 1}
    assert (summary.steps_min, summary.steps_max) == (2, 6)
    assert "step_rule='auto' -> " in str(summary) and "paragraph 1" in str(summary)
    assert summarize_examples(examples, "newline").rules == {"newline": 3}
    check = {**GOOD, "id": "k", "rationale": "Is the answer is 5 right?\nYes, 5.", "answer": "5"}
    read = read_jsonl(_write(tmp_path, [GOOD, check]))
    assert summarize_examples(read).ambiguous_markers == 1
    with pytest.raises(KPODInputError, match="step_rule"):
        summarize_examples(examples, "sentence")
    with pytest.raises(KPODInputError, match="examples: expected a list of CoTExample, got a single CoTExample"):
        summarize_examples(examples[0])
    with pytest.raises(KPODInputError, match="examples: expected a list of CoTExample, got a single CoTExample"):
        write_jsonl(examples[0], tmp_path / "one.jsonl")


def test_records_refuse_other_objects():
    from kpod_ops.data import to_record, validate_tokenized

    with pytest.raises(KPODInputError, match="example: expected a TokenizedExample, got dict"):
        to_record({"id": "a"})
    with pytest.raises(KPODInputError, match="example: expected a TokenizedExample, got list"):
        validate_tokenized([1, 2])


_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="#\r\n\x85\u2028\u2029"), min_size=1, max_size=30)


@settings(deadline=None)
@given(records=st.lists(st.tuples(_TEXT.filter(str.strip), _TEXT.filter(str.strip), st.integers(-10**6, 10**6)),
                        min_size=1, max_size=6, unique_by=lambda r: (r[0], r[1])),
       crlf=st.booleans())
def test_records_without_id_or_answer_read_the_same_in_any_order(tmp_path_factory, records, crlf):
    """A GSM8K-style record (question, rationale ending in '#### n', nothing else): the answer is n, the
    rationale loses its ending, and the id depends on the content only, whatever the order and line ends."""
    lines = [json.dumps({"question": q, "rationale": f"{r}\n#### {n:,}"}) for q, r, n in records]
    end = "\r\n" if crlf else "\n"
    folder = tmp_path_factory.mktemp("gsm")
    forward, backward = folder / "f.jsonl", folder / "b.jsonl"
    forward.write_bytes((end.join(lines) + end).encode())
    backward.write_bytes((end.join(reversed(lines)) + end).encode())
    got = read_jsonl(forward)
    assert [(e.answer, e.id) for e in got] == [(str(n), generated_id(q, f"{r}\n#### {n:,}")) for q, r, n in records]
    assert [e.rationale for e in got] == [r.rstrip() for _, r, _ in records] and not got.disagreements
    assert sorted(read_jsonl(backward), key=lambda e: e.id) == sorted(got, key=lambda e: e.id)
