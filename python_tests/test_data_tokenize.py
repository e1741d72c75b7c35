"""Tokenisation into prompt / step spans / answer for both architectures (S2; docs/method.md, R16–R17)."""

from __future__ import annotations

import pytest
from data_helpers import bpe_tokenizer, smollm2_tokenizer
from hypothesis import given, settings
from hypothesis import strategies as st

from kpod_ops.data import (
    CoTExample,
    load_builtin,
    tokenize_example,
    tokenize_examples,
    validate_tokenized,
)
from kpod_ops.errors import KPODInputError


def _examples():
    return load_builtin("gsm8k-fixture")[:10] + load_builtin("arith-cot", n=10, seed=3)


def _check_partition(te, ex):
    validate_tokenized(te)  # S2: non-empty, contiguous, ordered, partition [prompt_len, answer_start)
    assert "".join(te.steps) == ex.rationale
    assert te.n_steps == len(te.steps) >= 1
    assert te.input_ids[-1] == te_eos(te)


def te_eos(te):
    return te.answer_ids[-1]


@pytest.mark.parametrize("kind", ["bytelevel", "metaspace"])
def test_decoder_ids_are_the_full_text_and_spans_follow_offsets(kind):
    tok = bpe_tokenizer(kind)
    examples = _examples()
    for ex, te in zip(examples, tokenize_examples(examples, tok)):
        _check_partition(te, ex)
        assert te.input_ids[-1] == tok.eos_token_id and te.architecture == "decoder"
        full = f"Q: {ex.question}\nA: Let's think step by step.\n" + ex.rationale + f"\nTherefore, the answer is {ex.answer}."
        assert list(te.input_ids[:-1]) == tok(full, add_special_tokens=False)["input_ids"]  # no boundary artefacts
        if kind == "bytelevel":  # byte-level tokens cover the text exactly, so every span decodes to its step
            for (a, b), step in zip(te.step_spans, te.steps):
                assert tok.decode(te.input_ids[a:b]) == step
            assert tok.decode(te.answer_ids, skip_special_tokens=True) == f"\nTherefore, the answer is {ex.answer}."


@pytest.mark.parametrize("kind", ["bytelevel", "metaspace"])
def test_encoder_decoder_tokenises_each_step_alone(kind):
    tok = bpe_tokenizer(kind)
    examples = _examples()
    for ex, te in zip(examples, tokenize_examples(examples, tok, architecture="encoder-decoder")):
        _check_partition(te, ex)
        assert te.architecture == "encoder-decoder"
        for (a, b), step in zip(te.step_spans, te.steps):
            assert list(te.input_ids[a:b]) == tok(step, add_special_tokens=False)["input_ids"]


rationales = st.lists(
    st.tuples(
        st.sampled_from(["Tom has 3.5 apples", "so 17 + 4 = 21", "Mr. Lee pays $1.50", "e.g. 110*.3=33", "then"]),
        st.sampled_from([". ", ".\n", " ", "\n\n  "]),
    ),
    min_size=1,
    max_size=8,
).map(lambda parts: "".join(a + b for a, b in parts).strip())


@settings(max_examples=60, deadline=None)
@given(rationales, st.sampled_from(["decoder", "encoder-decoder"]), st.sampled_from(["bytelevel", "metaspace"]))
def test_spans_partition_for_random_rationales(rationale, architecture, kind):
    ex = CoTExample("x", "How many apples?", rationale, "21")
    te = tokenize_example(ex, bpe_tokenizer(kind), architecture=architecture)
    _check_partition(te, ex)


def test_step_without_tokens_is_merged():
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    # A word-level tokenizer whose token "ab. C." crosses the boundary between steps "ab." and " C.".
    raw = Tokenizer(models.WordLevel({"<unk>": 0, "<eos>": 1, "ab. C.": 2, "x": 3}, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Split(Regex(r"ab\. C\.|\s+|\S+"), behavior="isolated")
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<eos>", unk_token="<unk>")
    ex = CoTExample("m", "x", "ab. C.", "1")
    te = tokenize_example(ex, tok)
    assert te.rationale_ids == (2,)
    assert te.steps == ("ab. C.",) and te.step_spans == ((te.prompt_len, te.prompt_len + 1),)
    assert tokenize_example(ex, tok, architecture="encoder-decoder").n_steps == 2  # tokenised alone: no merge


def test_templates_and_options():
    tok = bpe_tokenizer("bytelevel")
    ex = CoTExample("t", "How many?", "So 3. Then 4.", "4")
    te = tokenize_example(ex, tok, template="Question: {question}\n", answer_template="{sep}The answer is {answer}.")
    assert tok.decode(te.prompt_ids) == "Question: How many?\n"
    assert tok.decode(te.answer_ids, skip_special_tokens=True) == " The answer is 4."  # period rule -> space separator
    assert tokenize_example(ex, tok, step_rule="newline").n_steps == 1
    assert tokenize_example(ex, tok).n_steps == 2


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"architecture": "gpt"}, "architecture"),
        ({"template": "no question here"}, "template"),
        ({"answer_template": "done"}, "answer_template"),
        ({"template": "chat"}, "template: expected 'chat' only with a tokenizer that has a chat template"),
        ({"add_bos": True}, "add_bos"),
    ],
)
def test_tokenize_bad_input(kwargs, message):
    with pytest.raises(KPODInputError, match=message):
        tokenize_example(CoTExample("t", "q", "r.", "1"), bpe_tokenizer("bytelevel"), **kwargs)


def test_tokenize_needs_eos_and_respects_max_length():
    from transformers import PreTrainedTokenizerFast

    tok = bpe_tokenizer("bytelevel")
    no_eos = PreTrainedTokenizerFast(tokenizer_object=tok.backend_tokenizer)
    ex = CoTExample("t", "q", "r.", "1")
    with pytest.raises(KPODInputError, match="tokenizer: expected a tokenizer with an EOS token"):
        tokenize_example(ex, no_eos)
    with pytest.raises(KPODInputError, match="example 't': sequence length: expected at most max_length=5"):
        tokenize_examples([ex], tok, max_length=5)
    with pytest.warns(UserWarning, match="left out 1 of 1"):
        assert tokenize_examples([ex], tok, max_length=5, on_too_long="skip") == []
    with pytest.raises(KPODInputError, match=r"examples\[0\]: expected a CoTExample"):
        tokenize_examples([{"id": "t"}], tok)


def test_skipped_examples_are_named():
    tok = bpe_tokenizer("bytelevel")
    short, long = CoTExample("s", "q", "r.", "1"), CoTExample("long-one", "q", "r. " * 20, "1")
    with pytest.warns(UserWarning, match=r"left out 1 of 2 examples longer than max_length=40 tokens: 'long-one' \(\d+ tokens\)"):
        got = tokenize_examples([short, long], tok, max_length=40, on_too_long="skip")
    assert [te.id for te in got] == ["s"] and [i for i, _ in got.skipped] == ["long-one"]


@pytest.mark.parametrize(
    "examples_arg, kwargs, message",
    [
        ("list", {"template": "Q: {question} {topic}"}, r"template: expected a format string .* got 'Q: \{question\} \{topic\}' \(unknown field \{topic\}\)"),
        ("list", {"template": "Q: {question} {"}, r"template: expected a format string"),
        ("list", {"answer_template": "{answer} ({units})"}, r"answer_template: .*unknown field \{units\}"),
        ("list", {"answer_template": "{0} {answer}"}, r"answer_template: .*unknown field \{0\}"),
        ("list", {"step_rule": "sentences"}, r"step_rule: expected one of"),
        ("list", {"add_bos": "yes"}, r"add_bos: expected True, False or None"),
        ("empty", {}, r"examples: expected a non-empty list of CoTExample, got an empty list"),
        ("single", {}, r"examples: expected a list of CoTExample, got a single CoTExample \(wrap it in a list"),
        ("string", {}, r"examples: expected a list of CoTExample, got str"),
    ],
)
def test_tokenize_examples_bad_input(examples_arg, kwargs, message):
    ex = CoTExample("t", "q", "r.", "1")
    examples = {"list": [ex], "empty": [], "single": ex, "string": "r."}[examples_arg]
    with pytest.raises(KPODInputError, match=message):
        tokenize_examples(examples, bpe_tokenizer("bytelevel"), **kwargs)


@pytest.fixture(scope="module")
def smollm2(request):
    return smollm2_tokenizer(str(request.config.cache.mkdir("kpod_smollm2_tokenizer")))


def test_smollm2_alignment(smollm2):
    examples = load_builtin("gsm-symbolic", n=40, seed=5) + load_builtin("gsm8k-fixture")
    for architecture in ("decoder", "encoder-decoder"):
        for ex, te in zip(examples, tokenize_examples(examples, smollm2, architecture=architecture)):
            _check_partition(te, ex)
            assert te.input_ids[-1] == smollm2.eos_token_id
            for (a, b), step in zip(te.step_spans, te.steps):
                assert smollm2.decode(te.input_ids[a:b]) == step


def test_smollm2_chat_template(smollm2):
    ex = load_builtin("gsm8k-fixture")[0]
    te = tokenize_example(ex, smollm2, template="chat")
    prompt = smollm2.decode(te.prompt_ids)
    assert prompt.startswith("<|im_start|>") and prompt.endswith("<|im_start|>assistant\n") and ex.question in prompt
    assert "".join(te.steps) == ex.rationale and smollm2.decode(te.rationale_ids) == ex.rationale
    assert te.input_ids[-1] == smollm2.eos_token_id


# ------------------------------------------------------------------- vocabulary of the built-in tokenizer
def test_vocabulary_report_counts_the_words_the_builtin_tokenizer_spells_out():
    from kpod_ops.data import vocabulary_report
    from kpod_ops.data.vocabulary import oov_advice
    from kpod_ops.models import tiny_tokenizer

    tok = tiny_tokenizer()
    assert vocabulary_report(load_builtin("arith-cot", n=50, seed=3), tok).n_oov_words == 0  # its vocabulary is built from it
    ex = [CoTExample("a", "Carlos has 5 apples and Zoë gives him 3 more.", "Carlos has 5 + 3 = 8 apples.", "8")]
    report = vocabulary_report(ex, tok)
    # words: Carlos has apples and Zoë gives him more / Carlos has apples; "Carlos" is 6 letters, "Zoë" 2 letters + <unk>
    assert (report.n_words, report.n_oov_words, report.n_distinct_oov) == (11, 3, 2)
    assert report.top == (("Carlos", 2), ("Zoë", 1))
    assert report.n_oov_tokens == 2 * 6 + 3
    n_tokens = sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in (ex[0].question, ex[0].rationale))
    assert report.n_tokens == n_tokens and report.oov_token_share == pytest.approx(15 / n_tokens)
    assert "27.3 % of words" in str(report) and "Carlos (2)" in str(report)
    advice = oov_advice(report)
    assert advice is not None and "--student DIR" in advice and "built from your data" in advice
    assert oov_advice(report, threshold=0.5) is None
    assert report.to_dict()["top"] == [["Carlos", 2], ["Zoë", 1]] and report.to_dict()["oov_word_share"] == 0.2727
    own = vocabulary_report(ex, tiny_tokenizer(extra_words={"Carlos"}))  # a tokenizer built from the data
    assert own.top == (("Zoë", 1),)


def test_vocabulary_report_and_extra_words_refuse_bad_input():
    from kpod_ops.data import vocabulary_report
    from kpod_ops.models import tiny_tokenizer

    ex = load_builtin("arith-cot", n=2, seed=3)
    with pytest.raises(KPODInputError, match="examples: expected a list of CoTExample, got a single CoTExample"):
        vocabulary_report(ex[0], tiny_tokenizer())
    with pytest.raises(KPODInputError, match="tokenizer: expected a Hugging Face tokenizer"):
        vocabulary_report(ex, "gpt2")
    with pytest.raises(KPODInputError, match="top: expected an int >= 0"):
        vocabulary_report(ex, tiny_tokenizer(), top=-1)
    for bad in ("Carlos", ["Zoë"], ["two words"]):
        with pytest.raises(KPODInputError, match="extra_words: expected an iterable of words of ASCII letters"):
            tiny_tokenizer(extra_words=bad)
