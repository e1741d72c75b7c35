"""KPODSFTTrainer as TRL users expect it: TRL's dataset formats, every SFTConfig field honoured or refused
with the reason, label smoothing through the fused loss, TRL's metrics next to KPOD's, a model name and
peft_config accepted; and the Trainer internals the KPOD trainers override still have the signatures
they were written against."""

from __future__ import annotations

import inspect
import warnings

import numpy as np
import pytest
import torch
from test_hf import SequentialMixin, given, step_losses, tiny_data, tiny_llama, tiny_schedule, train_args

from kpod_ops import KPODInputError, keypoint_cross_entropy
from kpod_ops.data import KPODCollator, load_builtin, to_record, tokenize_examples, unguard
from kpod_ops.integrations.hf import KPODTrainer, _KPODTrainerMixin, apply_kpod_loss

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")
from kpod_ops.integrations.sft import KPODSFTTrainer, prepare_dataset  # noqa: E402

warnings.filterwarnings("ignore", message=".*use_cpu.*")
PROMPT = "Q: {question}\nA: Let's think step by step.\n"  # kpod_ops.data.DEFAULT_TEMPLATE
CHAT = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}")


def sft_args(out, **kw):
    base = dict(output_dir=str(out), report_to=[], use_cpu=True, save_strategy="no", logging_steps=1,
                disable_tqdm=True, seed=0, data_seed=0, bf16=False, max_length=None)
    base.update(kw)
    return trl.SFTConfig(**base)


def rows(n=8, kind="rationale"):
    """arith-cot examples as TRL rows: prompt + rationale + answer, prompt + completion, or messages."""
    out = []
    for e in load_builtin("arith-cot", "train", n=n, seed=0):
        completion = f"{e.rationale}\nTherefore, the answer is {e.answer}."
        if kind == "rationale":
            out.append({"id": e.id, "prompt": PROMPT.format(question=e.question), "rationale": e.rationale,
                        "answer": e.answer})
        elif kind == "completion":
            out.append({"id": e.id, "prompt": PROMPT.format(question=e.question), "completion": completion})
        else:
            out.append({"id": e.id, "answer": e.answer, "rationale": e.rationale, "messages": [
                {"role": "user", "content": e.question}, {"role": "assistant", "content": completion}]})
    return out


class SequentialSFT(SequentialMixin, KPODSFTTrainer):
    pass


# ------------------------------------------------------------------------------------------ datasets
@pytest.mark.parametrize("kind", ["rationale", "completion"])
def test_prompt_rows_tokenise_as_kpod_does(kind):
    """Standard prompt rows give the ids and step spans of kpod's own tokenisation (prompt template, rationale,
    answer sentence, EOS), whether the completion is given or built from rationale + answer."""
    tok, tokenized, _ = tiny_data(8)
    records = prepare_dataset(rows(8, kind), tok)
    for record, te in zip(records, tokenized):
        assert (record["id"], tuple(record["input_ids"]), record["prompt_len"], record["answer_start"]) == \
            (te.id, te.input_ids, te.prompt_len, te.answer_start)
        assert [tuple(s) for s in record["step_spans"]] == list(te.step_spans)
    assert records[0].get("answer") == (rows(1)[0]["answer"] if kind == "rationale" else None)


def test_a_prompt_that_ends_in_a_space_leaves_the_first_rationale_word_in_the_rationale():
    """With the tiny tokenizer a word carries its leading space, so "A: " + "First" gives one token " First" that
    starts on the prompt's last character; it is the rationale's first token (trained), as TRL splits the row,
    and the row tokenises as kpod's own template ending in a space does."""
    from kpod_ops.models import tiny_tokenizer

    tok = tiny_tokenizer()  # words carry their leading space: "A: First" is "A", ":", " First"
    e = load_builtin("arith-cot", "train", n=1, seed=0)[0]
    completion = f"{e.rationale}\nTherefore, the answer is {e.answer}."
    spaced = prepare_dataset([{"prompt": f"Q: {e.question}\nA: ", "completion": completion}], tok)[0]
    joined = prepare_dataset([{"prompt": f"Q: {e.question}\nA:", "completion": " " + completion}], tok)[0]
    assert tuple(spaced["input_ids"]) == tuple(joined["input_ids"])
    assert (spaced["prompt_len"], [tuple(s) for s in spaced["step_spans"]]) == \
        (joined["prompt_len"], [tuple(s) for s in joined["step_spans"]])
    first = spaced["input_ids"][spaced["prompt_len"]]
    assert e.rationale.startswith(tok.decode([first]).strip())
    own = tokenize_examples([e], tok, template="Q: {question}\nA: ")[0]
    assert own.prompt_len == spaced["prompt_len"] and list(own.step_spans) == [tuple(s) for s in spaced["step_spans"]]


def test_rows_as_people_write_them_read_as_read_jsonl_reads_them_or_fail_naming_the_row():
    from kpod_ops.models import tiny_tokenizer

    tok = tiny_tokenizer()
    prompt = "Q: Tom has 6 bags of 7 apples. How many apples?\nA:"
    # a GSM8K marker left in the rationale is split off (not a step that says the answer twice); a number answer reads
    (record,) = prepare_dataset([{"prompt": prompt, "rationale": " 6 * 7 = 42.\n#### 42", "answer": 42}], tok)
    assert tok.decode(record["input_ids"][record["prompt_len"]:]) == " 6 * 7 = 42. Therefore, the answer is 42.<eos>"
    assert record["answer"] == "42" and len(record["step_spans"]) == 1
    # an id on later rows only is kept (datasets' from_list reads the first row's keys alone)
    rows = [{"prompt": prompt, "rationale": " 6 * 7 = 42.", "answer": "42"},
            {"prompt": prompt + " ", "rationale": "6 * 7 = 42.", "answer": "42", "id": 7}]
    assert prepare_dataset(rows, tok)["id"][1] == "7"
    # duplicate ids (given, or made from identical rows) would share token weights and curriculum steps
    with pytest.raises(KPODInputError, match=r"train_dataset row 1: id: expected a unique example id.*'x' again"):
        prepare_dataset([{**rows[0], "id": "x"}, {**rows[1], "id": "x"}], tok)
    with pytest.raises(KPODInputError, match=r"row 1: id: .*again \(first on row 0\)"):
        prepare_dataset([rows[0], rows[0]], tok)
    with pytest.raises(KPODInputError, match=r"train_dataset row 1: rationale: expected a 'rationale' field"):
        prepare_dataset([rows[0], {"prompt": prompt, "completion": " 6 * 7 = 42. So 42 apples."}], tok)


def test_conversational_rows_place_prompt_steps_and_answer():
    tok, _, _ = tiny_data(2)
    tok.chat_template = CHAT
    conversation = rows(4, "messages")
    records = prepare_dataset(conversation, tok)
    for record, row in zip(records, conversation):
        ids, p, a = record["input_ids"], record["prompt_len"], record["answer_start"]
        assert tok.decode(ids[:p]).endswith("<assistant>")  # the generation prompt closes the prompt
        steps = [tok.decode(ids[s:e]) for s, e in record["step_spans"]]
        assert "".join(steps) == row["rationale"]
        assert tok.decode(ids[a:]).startswith("\nTherefore, the answer is") and record["answer"] == row["answer"]
    without = [{k: v for k, v in r.items() if k != "rationale"} for r in conversation]  # split at the marker
    assert prepare_dataset(without, tok)["step_spans"] == records["step_spans"]


def test_rows_kpod_cannot_read_are_refused_with_the_reason():
    tok, _, _ = tiny_data(2)
    with pytest.raises(KPODInputError, match="prompt"):
        prepare_dataset([{"text": "a plain language-modelling row"}], tok)
    with pytest.raises(KPODInputError, match="answer marker"):
        prepare_dataset([{"prompt": "Q: 1 + 1?\n", "completion": "It is two."}], tok)
    with pytest.raises(KPODInputError, match="not found in the completion"):
        prepare_dataset([{"prompt": "Q\n", "completion": "A. #### 2", "rationale": "B."}], tok)
    with pytest.raises(KPODInputError, match="IterableDataset"):
        prepare_dataset(datasets.Dataset.from_list(rows(2)).to_iterable_dataset(), tok)


# ------------------------------------------------------------------------------------------ SFTConfig
@pytest.mark.parametrize("field, value, reason", [
    ("packing", True, "one position per row"),
    ("padding_free", True, "one position per row"),
    ("eval_packing", True, "one position per row"),
    ("completion_only_loss", False, "never trained"),
    ("loss_type", "dft", "DFT"),
    ("truncation_mode", "keep_end", "never truncated"),
    ("chat_template_path", "some/tokenizer", "clone_chat_template"),
])
def test_sft_config_fields_kpod_cannot_honour_are_refused(tmp_path, field, value, reason):
    tok, tokenized, _ = tiny_data(2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        args = sft_args(tmp_path, **{field: value})
    with pytest.raises(KPODInputError, match=rf"args\.{field}.*{reason}"):
        KPODSFTTrainer(tiny_llama(tok), args, train_dataset=rows(2), processing_class=tok)
    if field == "chat_template_path":  # a template file is honoured
        path = tmp_path / "chat.jinja"
        path.write_text(CHAT)
        trainer = KPODSFTTrainer(tiny_llama(tok), sft_args(tmp_path, chat_template_path=str(path), max_steps=1),
                                 train_dataset=rows(2, "messages"), processing_class=tok)
        assert trainer.processing_class.chat_template == CHAT and trainer.args.chat_template_path == str(path)


def test_max_length_leaves_out_longer_examples_and_assistant_only_loss_needs_a_conversation(tmp_path):
    tok, tokenized, _ = tiny_data(8)
    lengths = sorted(len(te.input_ids) for te in tokenized)
    limit = lengths[4]
    with pytest.warns(UserWarning, match=f"left out 3 of 8 examples of train_dataset longer than max_length={limit}"):
        trainer = KPODSFTTrainer(tiny_llama(tok), sft_args(tmp_path, max_length=limit, per_device_train_batch_size=8),
                                 train_dataset=rows(8), processing_class=tok)
    batch = next(iter(trainer.get_train_dataloader()))
    assert len(trainer.train_dataset) == 5 and batch["input_ids"].shape == (5, limit)
    with pytest.raises(KPODInputError, match="max_length"):
        KPODSFTTrainer(tiny_llama(tok), sft_args(tmp_path, max_length=lengths[0] - 1), train_dataset=rows(8),
                       processing_class=tok)
    with pytest.raises(KPODInputError, match="assistant_only_loss"):
        KPODSFTTrainer(tiny_llama(tok), sft_args(tmp_path, assistant_only_loss=True), train_dataset=rows(2),
                       processing_class=tok)


# ------------------------------------------------------------------------------------------ loss and metrics
def _by_hand(model, batch, normaliser, smoothing):
    """The KPOD loss of ``batch`` and (entropy, top-1 accuracy) over its active tokens, from the logits."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = unguard(batch["labels"])
    total = keypoint_cross_entropy(logits, labels, batch["token_weights"], batch["loss_start"], shift=True,
                                   reduction="sum", label_smoothing=smoothing)
    positions = torch.arange(labels.shape[1])
    active = (labels != -100) & (positions >= 1) & (positions >= batch["loss_start"][:, None])
    den = int(active.sum()) if normaliser == "token" else labels.shape[0]
    logp = torch.log_softmax(logits[:, :-1][active[:, 1:]], dim=-1)
    entropy = float(-(logp.exp() * logp).sum(-1).mean())
    accuracy = float((logp.argmax(-1) == labels[:, 1:][active[:, 1:]]).float().mean())
    return float(total) / den, entropy, accuracy


@pytest.mark.parametrize("fused_linear", [False, True])
def test_label_smoothing_and_trl_metrics(tmp_path, fused_linear):
    """label_smoothing_factor goes to the fused loss; entropy and mean_token_accuracy are over the tokens the
    KPOD loss counts; num_tokens, kpod_active_share and kpod_stage are logged."""
    tok, tokenized, weights = tiny_data(4)
    schedule = tiny_schedule(tokenized, n_epochs=2)
    model = tiny_llama(tok)
    batch = KPODCollator(tok, weights, schedule.given_steps(1))(tokenized)
    want, entropy, accuracy = _by_hand(model, batch, "token", 0.1)
    args = sft_args(tmp_path, per_device_train_batch_size=4, num_train_epochs=2, label_smoothing_factor=0.1)
    trainer = SequentialSFT(model, args, train_dataset=[to_record(te) for te in tokenized], processing_class=tok,
                            token_weights=weights, schedule=schedule, normaliser="token", fused_linear=fused_linear)
    assert trainer.label_smoother is None and trainer.args.label_smoothing_factor == 0.1
    trainer.train()
    log = trainer.state.log_history[0]
    assert log["loss"] == pytest.approx(want, rel=1e-5)
    assert log["entropy"] == pytest.approx(entropy, rel=1e-5) and log["mean_token_accuracy"] == pytest.approx(accuracy)
    assert log["num_tokens"] == int(batch["attention_mask"].sum()) and log["kpod_stage"] == 1
    assert trainer.state.log_history[1]["kpod_stage"] == 2
    steps = batch["step_ids"]
    first = (steps >= 0).int().argmax(1)
    completion = int(sum(int(batch["attention_mask"][b, first[b]:].sum()) for b in range(4)))
    active = int((unguard(batch["labels"]) != -100).sum())
    assert log["kpod_active_share"] == pytest.approx(active / completion) and active < completion


def test_label_smoothing_through_kpod_trainer_and_the_patch(tmp_path):
    tok, tokenized, weights = tiny_data(4)
    model = tiny_llama(tok)
    batch = KPODCollator(tok, weights, given(tokenized))(tokenized)
    want = _by_hand(model, batch, "sequence", 0.2)[0]
    args = train_args(tmp_path, per_device_train_batch_size=4, max_steps=1, label_smoothing_factor=0.2)
    out = KPODTrainer(model, args, KPODCollator(tok, weights, given(tokenized)), train_dataset=tokenized).train()
    assert out.training_loss == pytest.approx(want, rel=1e-5)
    for fused_linear in (False, True):  # the patch alone: a token mean, smoothed
        patched = apply_kpod_loss(tiny_llama(tok), fused_linear=fused_linear, label_smoothing=0.2)
        with torch.no_grad():
            got = patched(**batch).loss
        assert float(got) == pytest.approx(_by_hand(tiny_llama(tok), batch, "token", 0.2)[0], rel=1e-5)
    with pytest.raises(KPODInputError, match="label_smoothing"):
        apply_kpod_loss(tiny_llama(tok), label_smoothing=1.0)
    with pytest.raises(KPODInputError, match="label_smoothing"):  # a patch with other smoothing than the args
        KPODTrainer(apply_kpod_loss(tiny_llama(tok)), args, train_dataset=tokenized, processing_class=tok)


@pytest.mark.slow
def test_model_name_peft_config_and_trl_formats_train_like_the_records(tmp_path):
    """A model path (loaded with from_pretrained, nothing downloaded), peft_config and conversational rows give the
    per-step losses of the same student wrapped by hand and trained on the same examples as records; evaluate()
    takes rows in TRL's format too."""
    from peft import LoraConfig, get_peft_model

    tok, _, weights = tiny_data(2)
    tok.chat_template = CHAT
    conversation = rows(8, "messages")
    records = prepare_dataset(conversation, tok)
    tiny_llama(tok).save_pretrained(tmp_path / "student")
    tok.save_pretrained(tmp_path / "student")
    lora = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    common = dict(per_device_train_batch_size=4, max_steps=2, learning_rate=1e-2, report_to=[])
    by_name = SequentialSFT(str(tmp_path / "student"), sft_args(tmp_path / "a", **common), train_dataset=conversation,
                            peft_config=LoraConfig(**lora))
    assert hasattr(by_name.model, "peft_config") and by_name.processing_class.chat_template == CHAT
    by_name.train()
    torch.manual_seed(0)
    by_hand = get_peft_model(tiny_llama(tok), LoraConfig(**lora))
    trainer = SequentialSFT(by_hand, sft_args(tmp_path / "b", **common), train_dataset=records, processing_class=tok)
    trainer.train()
    np.testing.assert_allclose(step_losses(by_name), step_losses(trainer), rtol=1e-5)
    metrics = by_name.evaluate(conversation[:4])
    assert np.isfinite(metrics["eval_loss"]) and 0 <= metrics["eval_mean_token_accuracy"] <= 1
    assert metrics["eval_kpod_active_share"] == pytest.approx(1.0)  # evaluation batches: the full rationale


# ------------------------------------------------------------------------------------------ Trainer internals
def _overrides(cls, base):
    """Methods ``cls`` (and the KPOD mixin) define that ``base`` also defines."""
    own = {n for k in cls.__mro__ if k in (cls, _KPODTrainerMixin) for n, v in vars(k).items() if callable(v)}
    return sorted(n for n in own if hasattr(base, n) and not n.startswith("__"))


@pytest.mark.parametrize("kind", ["KPODTrainer", "KPODSFTTrainer"])
def test_overridden_trainer_methods_keep_their_signatures(kind):
    """Each Trainer / SFTTrainer method the KPOD trainers override has the parameters it was written against:
    a transformers or TRL update that changes one fails here instead of silently bypassing the override."""
    from transformers import Trainer

    cls, base = (KPODTrainer, Trainer) if kind == "KPODTrainer" else (KPODSFTTrainer, trl.SFTTrainer)
    expected = {
        "_get_num_items_in_batch": ["self", "batch_samples", "device"],
        "_set_signature_columns_if_needed": ["self"],
        "compute_loss": ["self", "model", "inputs", "return_outputs", "num_items_in_batch"],
        "evaluate": ["self", "eval_dataset", "ignore_keys", "metric_key_prefix"],
        "get_eval_dataloader": ["self", "eval_dataset"],
        "get_test_dataloader": ["self", "test_dataset"],
        "log": ["self", "logs", "start_time"],
        "prediction_step": ["self", "model", "inputs", "prediction_loss_only", "ignore_keys"],
    }
    overridden = _overrides(cls, base)
    assert set(overridden) <= set(expected), f"new override(s) to list here: {set(overridden) - set(expected)}"
    for name in overridden:
        assert list(inspect.signature(getattr(base, name)).parameters) == expected[name], name
        assert list(inspect.signature(getattr(cls, name)).parameters) == expected[name], name
    # the private ones, and the base methods the KPOD code calls by name
    assert {"_get_num_items_in_batch", "_set_signature_columns_if_needed"} <= set(overridden)
    assert list(inspect.signature(Trainer.compute_loss).parameters) == expected["compute_loss"]
    assert "_signature_columns" in inspect.getsource(Trainer._set_signature_columns_if_needed)


# ------------------------------------------------------------------------------------------ configuration
def test_kpod_config_parses_beside_sft_config_and_reaches_the_trainer(tmp_path):
    from transformers import HfArgumentParser

    from kpod_ops.integrations.config import KPODConfig

    tok, tokenized, weights = tiny_data(4)
    schedule = tiny_schedule(tokenized, n_epochs=2)
    torch.save(schedule.state_dict(), tmp_path / "schedule.pt")
    kpod, args = HfArgumentParser((KPODConfig, trl.SFTConfig)).parse_args_into_dataclasses([
        "--output_dir", str(tmp_path), "--normaliser", "token", "--fused_linear", "true", "--chunk_size", "3",
        "--label_smoothing", "0.1", "--schedule_file", str(tmp_path / "schedule.pt"), "--learning_rate", "0.01",
        "--num_train_epochs", "2", "--use_cpu", "--bf16", "False", "--report_to", "none", "--max_length", "1000"])
    assert (kpod.normaliser, kpod.fused_linear_value, kpod.chunk_size_value, kpod.label_smoothing) == ("token", True, 3, 0.1)
    assert args.learning_rate == 0.01 and args.max_length == 1000
    trainer = KPODSFTTrainer(tiny_llama(tok), args, train_dataset=[to_record(te) for te in tokenized],
                             processing_class=tok, **kpod.trainer_kwargs())
    patch = trainer.model._kpod_patch
    assert (patch.fused_linear, patch.chunk_size, patch.label_smoothing) == (True, 3, 0.1)
    assert trainer.kpod_normaliser == "token" and trainer.data_collator.given_steps.schedule.ids == schedule.ids
    batch = KPODCollator(tok, weights, given(tokenized))(tokenized)
    with torch.no_grad():
        chunked = apply_kpod_loss(tiny_llama(tok), fused_linear=True, chunk_size=3)(**batch).loss
        whole = apply_kpod_loss(tiny_llama(tok), fused_linear=True)(**batch).loss
    assert float(chunked) == pytest.approx(float(whole), rel=1e-5)
    for bad in ({"normaliser": "mean"}, {"fused_linear": "maybe"}, {"chunk_size": "0"}, {"label_smoothing": 1.5},
                {"schedule_file": str(tmp_path / "missing.pt")}):
        with pytest.raises(KPODInputError, match=next(iter(bad))):
            KPODConfig(**bad)
    with pytest.raises(KPODInputError, match="label_smoothing"):  # two different values for one thing
        KPODTrainer(tiny_llama(tok), train_args(tmp_path, label_smoothing_factor=0.2), train_dataset=tokenized,
                    processing_class=tok, label_smoothing=0.1)


@pytest.mark.slow
def test_example_script_trains_from_the_command_line(tmp_path):
    """examples/sft_kpod.py, end to end with tiny settings: KPODConfig and SFTConfig from the command line."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "examples" / "sft_kpod.py"
    done = subprocess.run([sys.executable, str(script), "--output_dir", str(tmp_path / "out"), "--model", "tiny",
                           "--n_train", "8", "--n_eval", "4", "--max_steps", "2", "--per_device_train_batch_size", "4",
                           "--per_device_eval_batch_size", "4", "--use_cpu", "--bf16", "False", "--report_to", "none",
                           "--save_strategy", "no", "--normaliser", "token", "--fused_linear", "false",
                           "--label_smoothing", "0.1", "--max_new_tokens", "4", "--disable_tqdm", "True"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=1800)  # a guard against a hang
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads(done.stdout.strip().splitlines()[-1])
    assert np.isfinite(metrics["eval_loss"]) and 0 <= metrics["answer_accuracy"] <= 1
    assert {"eval_entropy", "eval_mean_token_accuracy", "eval_kpod_active_share"} <= set(metrics)


# ------------------------------------------------------------------------------------------ MoE students
def tiny_mixtral(tok, coef=0.001):
    from transformers import MixtralConfig, MixtralForCausalLM

    torch.manual_seed(0)
    return MixtralForCausalLM(MixtralConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id, bos_token_id=None, num_local_experts=4, num_experts_per_tok=2,
        output_router_logits=True, router_aux_loss_coef=coef))


@pytest.mark.parametrize("fused_linear", [False, True])
def test_router_aux_loss_coef_of_the_sft_config_is_honoured(tmp_path, fused_linear):
    """SFTConfig(router_aux_loss_coef=...) weighs the MoE student's router loss, as in TRL (it was the model's own
    coefficient, silently)."""
    tok, tokenized, weights = tiny_data(4)
    args = sft_args(tmp_path, per_device_train_batch_size=4, max_steps=1, router_aux_loss_coef=5.0)
    trainer = KPODSFTTrainer(tiny_mixtral(tok), args, train_dataset=[to_record(te) for te in tokenized],
                             processing_class=tok, token_weights=weights, fused_linear=fused_linear)
    batch = next(iter(trainer.get_train_dataloader()))
    with torch.no_grad():
        loss, outputs = trainer.compute_loss(trainer.model, dict(batch), return_outputs=True)
        kpod = trainer.model(**batch, output_router_logits=False).loss
    assert outputs.aux_loss is not None and float(outputs.aux_loss) > 0.1
    assert float(loss) == pytest.approx(float(kpod) + 5.0 * float(outputs.aux_loss), rel=1e-5)


def test_router_aux_loss_is_logged_as_trl_logs_it(tmp_path):
    """TRL logs an MoE student's router loss as ``aux_loss`` next to its other metrics; so does KPODSFTTrainer."""
    tok, tokenized, weights = tiny_data(4)
    args = sft_args(tmp_path, per_device_train_batch_size=4, max_steps=1, learning_rate=1e-9)
    trainer = KPODSFTTrainer(tiny_mixtral(tok), args, train_dataset=[to_record(te) for te in tokenized],
                             processing_class=tok, token_weights=weights, fused_linear=True)
    batch = next(iter(trainer.get_train_dataloader()))
    with torch.no_grad():
        aux = float(trainer.model(**batch).aux_loss)
    trainer.train()
    assert trainer.state.log_history[0]["aux_loss"] == pytest.approx(aux, rel=1e-4)
