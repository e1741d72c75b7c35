"""Unit tests of the distillation pipeline's pieces: tokenizer, training loop, evaluation, stages, compare."""

from __future__ import annotations

import functools
from dataclasses import replace

import numpy as np
import pytest
import torch
from training_helpers import assert_trained_alike, params

from kpod_ops import KPODInputError, keypoint_cross_entropy
from kpod_ops.data import load_builtin, tokenize_examples
from kpod_ops.data.collator import KPODCollator
from kpod_ops.models import tiny_student, tiny_tokenizer
from kpod_ops.pipeline import TrainSettings, evaluate, generate, merge, method_settings, preset_config, prompt_ids, train
from kpod_ops.pipeline.config import stage_hash
from kpod_ops.pipeline.store import Stage, optimizer_from_files, optimizer_to_files
from kpod_ops.pipeline.warmup import pack


@functools.cache
def _tok():
    return tiny_tokenizer()


def _student(seed: int = 0):
    return tiny_student(_tok(), hidden_size=32, num_layers=2, num_heads=2, seed=seed)


@functools.cache
def _examples(n: int = 8):
    return tuple(tokenize_examples(load_builtin("arith-cot", "train", n=n, seed=0), _tok()))


def test_tiny_tokenizer_round_trips_text_and_reads_numbers_digit_by_digit():
    tok = _tok()
    text = "Q: Zyx has 107 apples.\nA: Let's think step by step.\n17 + 4 = 21; xylophone!?"
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text and tok.unk_token_id not in ids
    assert tok.convert_ids_to_tokens(tok("107")["input_ids"]) == ["1", "0", "7"]
    assert tok.eos_token == "<eos>" and tok.pad_token == "<pad>" and tok.bos_token is None
    for ex in load_builtin("arith-cot", "test", n=50, seed=0):
        assert tok.unk_token_id not in tok(ex.question + ex.rationale)["input_ids"]
    assert tiny_tokenizer().get_vocab() == tok.get_vocab()  # built deterministically


def test_tiny_student_is_seeded_and_checks_its_sizes():
    a, b = _student(1), _student(1)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    with pytest.raises(KPODInputError, match="hidden_size"):
        tiny_student(_tok(), hidden_size=30, num_heads=4)


def test_pack_keeps_every_token_in_order():
    blocks = pack([[1, 2, 3], [4, 5], [6, 7, 8], [9, 10]], 4)
    assert blocks == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10]]
    assert pack([[1, 2, 3], [4, 5]], 4) == [[1, 2, 3, 4]]  # a lone last token has nothing to predict


def _trained(micro: int, normaliser: str = "sequence"):
    model = _student()
    start = params(model)
    settings = TrainSettings(epochs=1, batch_size=4, micro_batch_size=micro, lr=1e-2, normaliser=normaliser, checkpoint_every=100)
    history = train(model, _tok(), list(_examples()), settings, progress=False).history
    return model, [h["loss"] for h in history], start


@pytest.mark.parametrize("normaliser", ["sequence", "token"])
def test_gradient_accumulation_does_not_change_the_update(normaliser):
    (whole, loss_whole, start), (split, loss_split, _) = _trained(4, normaliser), _trained(1, normaliser)
    assert len(loss_whole) == 2 and loss_whole == pytest.approx(loss_split, rel=1e-5)  # step 2 sees step 1's update
    assert_trained_alike(params(split), params(whole), start)


def test_sequence_normaliser_is_the_weighted_sum_over_the_global_batch_divided_by_its_sequences():
    examples = list(_examples())
    rng = np.random.default_rng(0)
    weights = {te.id: rng.uniform(0.5, 1.5, te.rationale_len).astype(np.float32) for te in examples}
    model = _student()
    settings = TrainSettings(epochs=1, batch_size=8, micro_batch_size=4, lr=1e-3, checkpoint_every=100)
    history = train(model, _tok(), examples, settings, token_weights=weights, progress=False).history
    fresh = _student()
    order = np.random.default_rng([0, 11, 1]).permutation(len(examples))
    batch = KPODCollator(_tok(), token_weights=weights)([examples[i] for i in order])
    with torch.no_grad():
        logits = fresh(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        expected = keypoint_cross_entropy(logits, batch["labels"], batch["token_weights"], batch["loss_start"], shift=True,
                                          reduction="sum") / len(examples)
    assert history[0]["loss"] == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_fused_linear_training_matches_the_logits_path(precision):
    """train.fused_linear (default "auto": on for the Llama-style tiny student) takes the same steps as the logits path."""
    from kpod_ops.pipeline.train import resolve_fused_linear

    examples = list(_examples())
    rng = np.random.default_rng(1)
    weights = {te.id: rng.uniform(0.0, 2.0, te.rationale_len).astype(np.float32) for te in examples}
    assert resolve_fused_linear(_student(), TrainSettings().fused_linear)[0]  # the default uses it here
    curves, models = [], []
    start = params(_student())
    for mode in (False, "auto"):
        model = _student()
        settings = TrainSettings(epochs=2, batch_size=4, micro_batch_size=2, lr=1e-2, checkpoint_every=100,
                                 precision=precision, fused_linear=mode)
        curves.append([h["loss"] for h in train(model, _tok(), examples, settings, token_weights=weights,
                                                progress=False, say=lambda _: None).history])
        models.append(model)
    assert len(curves[0]) == 4 and len(set(curves[0])) == 4  # the curve moves
    np.testing.assert_allclose(curves[1], curves[0], rtol=1e-5 if precision == "fp32" else 2e-2)
    if precision == "fp32":
        assert_trained_alike(params(models[1]), params(models[0]), start)


def test_fused_linear_true_refuses_an_unsupported_student():
    from transformers import GPT2Config, GPT2LMHeadModel

    from kpod_ops.pipeline.train import resolve_fused_linear

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(_tok()), n_embd=32, n_layer=1, n_head=2))
    assert resolve_fused_linear(gpt2, "auto")[0] is False  # "auto": the logits path, with the reason
    with pytest.raises(KPODInputError, match="train.fused_linear"):
        resolve_fused_linear(gpt2, True)
    with pytest.raises(KPODInputError, match="fused_linear"):
        TrainSettings(fused_linear="yes")


def test_optimizer_state_round_trips_through_safetensors_and_json():
    model = _student()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(input_ids=torch.tensor([[5, 6, 7]])).logits.sum().backward()
    opt.step()
    tensors, rest = optimizer_to_files(opt)
    import json

    rest = json.loads(json.dumps(rest))
    other = torch.optim.AdamW(model.parameters(), lr=1e-3)
    optimizer_from_files(other, tensors, rest)
    a, b = opt.state_dict(), other.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for k in a["state"]:
        for key, value in a["state"][k].items():
            assert torch.equal(value, b["state"][k][key])


def test_a_checkpoint_saves_over_the_old_one_a_killed_run_left_behind(tmp_path):
    import json

    from kpod_ops.pipeline.train import _save_checkpoint, latest_checkpoint

    model = _student()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    _save_checkpoint(tmp_path, model, opt, {"step": 1})
    # killed after the swap of its second save, before the old checkpoint was removed: both are on disk
    (tmp_path / "checkpoint.old").mkdir()
    (tmp_path / "checkpoint.old" / "state.json").write_text('{"step": 0}')
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint"
    _save_checkpoint(tmp_path, model, opt, {"step": 2})  # the resumed run's next save
    assert not (tmp_path / "checkpoint.old").exists()
    assert json.loads((tmp_path / "checkpoint" / "state.json").read_text()) == {"step": 2}


def test_a_complete_new_checkpoint_a_kill_left_between_the_renames_is_resumed_from(tmp_path):
    import json
    import os

    from kpod_ops.pipeline.train import _save_checkpoint, latest_checkpoint

    model = _student()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    _save_checkpoint(tmp_path, model, opt, {"step": 1})
    _save_checkpoint(tmp_path, model, opt, {"step": 2})
    # killed between the two renames of the third save: the old one moved aside, the new one complete
    os.replace(tmp_path / "checkpoint", tmp_path / "checkpoint.old")
    (tmp_path / "checkpoint.old").rename(tmp_path / "keep")
    _save_checkpoint(tmp_path, model, opt, {"step": 3})
    os.replace(tmp_path / "checkpoint", tmp_path / "checkpoint.new")
    (tmp_path / "keep").rename(tmp_path / "checkpoint.old")
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint.new"
    assert json.loads((tmp_path / "checkpoint.new" / "state.json").read_text()) == {"step": 3}
    # an unfinished new one (no state.json: it is written last) is passed over
    (tmp_path / "checkpoint.new" / "state.json").unlink()
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint.old"
    _save_checkpoint(tmp_path, model, opt, {"step": 4})  # the resumed run's next save
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]
    assert json.loads((tmp_path / "checkpoint" / "state.json").read_text()) == {"step": 4}


def test_batched_left_padded_generation_equals_one_prompt_at_a_time():
    tok, model = _tok(), _student(3)
    examples = load_builtin("arith-cot", "test", n=6, seed=0)
    prompts = prompt_ids(examples, tok)
    assert len({len(p) for p in prompts}) > 1  # different lengths, so the batch is padded
    kw = {"pad_id": tok.pad_token_id, "eos_id": tok.eos_token_id, "max_new_tokens": 8, "progress": False}
    assert generate(model, prompts, batch_size=6, **kw) == generate(model, prompts, batch_size=1, **kw)


def test_prompts_are_exactly_the_training_prompt_tokens_and_answers_are_matched():
    tok = _tok()
    examples = load_builtin("arith-cot", "test", n=3, seed=0)
    for prompt, te in zip(prompt_ids(examples, tok), tokenize_examples(examples, tok)):
        assert prompt == list(te.input_ids[: te.prompt_len]) and tok.decode(prompt).endswith("step by step.\n")
    result = evaluate(_student(), tok, examples, max_new_tokens=4, batch_size=2, progress=False)
    assert result.n == 3 and 0 <= result.n_correct <= 3 and len(result.generations) == 3
    assert {"id", "generation", "predicted", "gold", "correct"} <= set(result.generations[0])


def test_stage_reuses_only_a_matching_hash_and_redoes_otherwise(tmp_path):
    said = []
    stage = Stage(tmp_path, "s", "aaa", said.append)
    assert stage.finished() is None
    stage.start()
    (stage.dir / "artefact").write_text("x")
    stage.finish(value=1)
    again = Stage(tmp_path, "s", "aaa", said.append).finished()
    assert again["value"] == 1 and again["reused"] and "reusing" in said[-1]
    assert Stage(tmp_path, "s", "bbb", said.append).finished() is None
    assert "configuration changed" in said[-1] and not (tmp_path / "s").exists()
    unfinished = Stage(tmp_path, "u", "aaa", said.append)
    unfinished.start()
    assert Stage(tmp_path, "u", "aaa", said.append).finished() is None  # no record: not done


def test_stage_hashes_follow_what_a_stage_depends_on():
    config = preset_config("quick")
    changed_lr = merge(config, {"train": {"lr": 1e-4}})
    assert stage_hash(config, "warmup") == stage_hash(changed_lr, "warmup")
    assert stage_hash(config, "train") != stage_hash(changed_lr, "train")
    assert stage_hash(config, "warmup") != stage_hash(replace(config, seed=1), "warmup")
    assert stage_hash(config, "data") == stage_hash(replace(config, seed=1), "data")  # --seed never moves the splits
    floored = merge(config, {"weights": {"floor": 0.0}})  # how the weights enter the loss: training only
    assert stage_hash(config, "weights") == stage_hash(floored, "weights")
    assert stage_hash(config, "train") != stage_hash(floored, "train")


def test_weights_restarts_is_optional_in_the_configuration_and_moves_only_the_weights_stage():
    config = preset_config("quick")
    assert "restarts" not in config.to_dict()["weights"]  # left at 1: written nowhere, every hash as before
    three = merge(config, {"weights": {"restarts": 3}})
    assert three.to_dict()["weights"]["restarts"] == 3
    assert stage_hash(config, "weights") != stage_hash(three, "weights")
    assert stage_hash(config, "warmup") == stage_hash(three, "warmup") and stage_hash(config, "train") == stage_hash(three, "train")
    for bad in (0, 1.5, True):
        with pytest.raises(KPODInputError, match="weights.restarts"):
            merge(config, {"weights": {"restarts": bad}})


def test_learn_weights_restarts_keep_the_lowest_validation_objective():
    from kpod_ops.pipeline.weights import learn_weights
    from kpod_ops.weighting import MaskLearnerConfig

    examples = list(_examples(12))
    train, val = examples[:8], examples[8:]
    config = MaskLearnerConfig(epochs=2, batch_size=4, num_prefixes=2, seed=5)
    one = learn_weights(_student(1), train, val, examples, config, allow_degenerate=True, progress=False)
    torch.rand(7)  # whatever ran before (a stage computed rather than reused): the learner starts from its seed alone
    three = learn_weights(_student(1), train, val, examples, config, restarts=3, allow_degenerate=True, progress=False)
    assert one.restarts == [] and [r["seed"] for r in three.restarts] == [5, 100_008, 200_011]
    chosen = [r for r in three.restarts if r["chosen"]]
    assert len(chosen) == 1
    eligible = [r for r in three.restarts if r["degenerate"] is None] or three.restarts
    assert chosen[0]["val_objective"] == min(r["val_objective"] for r in eligible)
    for key, w in chosen[0]["weights"].items():
        np.testing.assert_array_equal(three.weights[key], w)
    first = three.restarts[0]["weights"]  # restart 0 is the single run: same seed, same weights
    for key, w in one.weights.items():
        np.testing.assert_array_equal(first[key], w)
    assert len({float(r["val_objective"]) for r in three.restarts}) > 1  # the restarts differ
    with pytest.raises(KPODInputError, match="restarts"):
        learn_weights(_student(1), train, val, examples, config, restarts=0)


def test_weight_floor_keeps_every_token_trained_and_the_mean_at_one():
    from kpod_ops.pipeline.weights import with_floor

    w = {"a": np.array([0.0, 0.0, 3.0, 1.0], dtype=np.float32)}  # mean 1, words at 0
    out = with_floor(w, 0.8)
    np.testing.assert_allclose(out["a"], [0.8, 0.8, 1.4, 1.0], rtol=1e-6)
    assert out["a"].mean() == pytest.approx(1.0) and out["a"].dtype == np.float32
    assert with_floor(w, 0.0) is w  # the paper's weights as they are
    for bad in (1.0, -0.1, True, "0.5"):
        with pytest.raises(KPODInputError, match="weights.floor"):
            with_floor(w, bad)
        with pytest.raises(KPODInputError, match="weights.floor"):
            merge(preset_config("quick"), {"weights": {"floor": bad}})


def test_config_merge_and_methods_reject_unknown_names():
    with pytest.raises(KPODInputError, match="epochz"):
        merge(preset_config("quick"), {"train": {"epochz": 3}})
    with pytest.raises(KPODInputError, match="--preset"):
        preset_config("nope")
    with pytest.raises(KPODInputError, match="--method"):
        method_settings("nope")
    assert method_settings("standard") == {"loss_weights": False, "curriculum": False, "normalisation": None,
                                           "progressive": False, "beta": None}
    assert method_settings("no-diversity")["beta"] == 0.0 and method_settings("no-sig-dif")["normalisation"] == "uniform"
    merged = merge(preset_config("quick"), {"weights": {"learner": {"tau": 0.5}}})
    assert merged.weights.learner["tau"] == 0.5 and merged.weights.learner["alpha"] == 0.1  # the rest is kept


def test_easier_arith_variant_and_its_guard():
    from kpod_ops.data.arith import load_arith_cot
    from kpod_ops.pipeline.data import make_splits

    easy = load_arith_cot("train", 40, 0, max_steps=3, max_distractors=1)
    assert all(2 <= len(ex.rationale.splitlines()) <= 3 and len(ex.metadata["distractors"]) <= 1 for ex in easy)
    assert [e.question for e in load_arith_cot("train", 5, 0)] == [e.question for e in load_builtin("arith-cot", "train", n=5)]
    with pytest.raises(KPODInputError, match="max_steps"):
        load_arith_cot("train", 5, 0, max_steps=6)
    section = {**preset_config("quick").data.to_dict(), "n_train": 4, "n_val": 2, "n_test": 3}
    splits = make_splits(section)
    assert splits.counts() == {"train": 4, "val": 2, "test": 3}
    assert not {e.question for e in splits.train + splits.val} & {e.question for e in splits.test}
    with pytest.raises(KPODInputError, match="arith-cot data only"):
        make_splits({**section, "source": "gsm8k-fixture"})


def test_paper_config_file_merges_into_the_gpu_preset():
    from pathlib import Path

    from kpod_ops.pipeline import load_config_file

    file = Path(__file__).resolve().parents[1] / "examples" / "paper-llama7b.yaml"
    config = merge(preset_config("smollm2-gsm"), load_config_file(file))
    assert config.train.lr == 1e-5 and config.train.epochs == 20 and config.student.lora_r == 64
    assert config.curriculum.beta == 12.0 and config.weights.learner["alpha"] == 0.5


def test_keypoint_ranking_scores_numbers_and_operators_against_words():
    from kpod_ops.weighting import keypoint_ranking
    from kpod_ops.weighting.stats import token_role

    assert [token_role(p) for p in (" 12", "=", " +", " apples", ",", " 3.5")] == [
        "keypoint", "keypoint", "keypoint", "word", "other", "keypoint"]
    tok = _tok()
    examples = tokenize_examples(load_builtin("arith-cot", "train", n=6, seed=0), tok)
    role = {te.id: np.array([token_role(tok.decode([t])) for t in te.rationale_ids]) for te in examples}
    right = {i: (r == "keypoint").astype(np.float32) for i, r in role.items()}
    wrong = {i: (r == "word").astype(np.float32) for i, r in role.items()}
    flat = {i: np.full(len(r), 0.5, np.float32) for i, r in role.items()}
    assert keypoint_ranking(right, examples, tok)["auc"] == 1.0 and keypoint_ranking(wrong, examples, tok)["auc"] == 0.0
    ranking = keypoint_ranking(flat, examples, tok)
    assert ranking["auc"] == 0.5 and ranking["n_keypoint"] > 0 and ranking["n_word"] > ranking["n_keypoint"]
    assert ranking["kept_keypoint_share"] is None  # nothing above 0.5 is kept
    assert keypoint_ranking(right, examples, tok)["kept_keypoint_share"] == 1.0
    assert keypoint_ranking(wrong, examples, tok)["kept_keypoint_share"] == 0.0
    share = ranking["n_keypoint"] / (ranking["n_keypoint"] + ranking["n_word"])
    assert ranking["keypoint_share"] == pytest.approx(share)
    # the same kept tokens with the near-zero rest ordered the other way: the AUC moves, the kept share does not
    rng = np.random.default_rng(0)
    kept = {i: np.where(r == "keypoint", 0.9 * (rng.random(len(r)) < 0.3), 0.0) for i, r in role.items()}
    low = {i: kept[i] + 0.01 * (r == "word") for i, r in role.items()}
    a, b = keypoint_ranking(low, examples, tok), keypoint_ranking(kept, examples, tok)
    assert a["auc"] < b["auc"] - 0.2 and a["kept_keypoint_share"] == b["kept_keypoint_share"] == 1.0
    # a mixed case counted by hand: every keypoint, every other word and every "other" token kept
    mixed = {}
    for i, r in role.items():
        word_rank = np.cumsum(r == "word")
        mixed[i] = ((r == "keypoint") | (r == "other") | ((r == "word") & (word_rank % 2 == 1))).astype(np.float32)
    n_key = sum(int((r == "keypoint").sum()) for r in role.values())
    n_word_kept = sum(int(((r == "word") & (np.cumsum(r == "word") % 2 == 1)).sum()) for r in role.values())
    m = keypoint_ranking(mixed, examples, tok)
    assert (m["n_kept_keypoint"], m["n_kept_word"]) == (n_key, n_word_kept)  # "other" tokens are not counted
    assert m["kept_keypoint_share"] == pytest.approx(n_key / (n_key + n_word_kept))


def test_the_report_says_what_the_weights_keep_and_when_they_keep_nothing():
    from kpod_ops.pipeline.report import markdown

    def report(share, n_key, n_word):
        rank = {"auc": 0.4, "mean_keypoint": 0.3, "mean_word": 0.02, "kept_keypoint_share": share,
                "keypoint_share": 0.45, "n_kept_keypoint": n_key, "n_kept_word": n_word, "n_keypoint": 1200, "n_word": 1467}
        return markdown({"preset": "quick", "method": "kpod", "seed": 1, "test_accuracy": 0.5, "n_test": 10,
                         "n_correct": 5, "timings": {}, "total_seconds": 1.0, "method_settings": {},
                         "versions": {"kpod_ops": "0.1", "torch": "2.13.0"},
                         "machine": {"cpu": "x", "cores": 2, "torch_threads": 1, "cpu_kernels": "avx2"},
                         "weights": {"degenerate": None, "in_loss": "floor 0.5", "keypoint_ranking": rank,
                         "restarts": [{"seed": 1, "val_objective": 0.5, "kept_keypoint_share": share, "keypoint_auc": 0.4,
                                       "degenerate": None, "chosen": True}]}}, [])

    text = report(0.9, 900, 100)
    assert ("the weights keep (w > 0.5) 900 of 1,200 number/operator tokens and 100 of 1,467 word tokens: 90 % of what "
            "they keep are numbers and operators, against 45 % if tokens were kept at random") in text
    assert "kept keypoint share 90 % **chosen**" in text.replace(", ROC-AUC 0.40", "")
    assert "on x (2 cores, 1 torch thread, CPU kernels: avx2)." in text and "Versions: kpod_ops 0.1, torch 2.13.0." in text
    assert "**warning**" not in text
    none = report(None, 0, 0)
    assert "the weights keep (w > 0.5) no number, operator or word token" in none
    assert "kept keypoint share none (no weight > 0.5)" in none
    assert "- keypoints, **warning**: the weights keep no number, operator or word token, below the 70 %" in none
    words = report(0.33, 330, 670)  # a learner that kept mostly words
    assert ("- keypoints, **warning**: the weights keep 33 % numbers and operators among their number/operator and word "
            "tokens, below the 70 %") in words and "45 % if kept at random" in words and "another --seed" in words
    assert "**warning**" not in report(0.7, 700, 300)


def test_weights_for_loss_fix_the_keypoint_contrast_and_check_the_learned_weights():
    from kpod_ops.pipeline.weights import weights_for_loss

    rng = np.random.default_rng(0)
    learned = {f"q{i}": np.where(rng.random(12) < 0.3, 1.0, 0.0).astype(np.float32) for i in range(6)}
    learned["q0"][:2] = (1.0, 0.0)  # both kinds in every rationale
    out = weights_for_loss(learned, 0.5, renormalize=True, allow_degenerate=False)
    for k, w in out.items():  # mean 1 per rationale, a keypoint (w = 1) twice a masked token (w = 0), whatever the mean
        assert w.mean() == pytest.approx(1.0) and w.dtype == np.float32
        assert w[learned[k] == 1].min() / w[learned[k] == 0].max() == pytest.approx(2.0)
    plain = weights_for_loss(learned, 0.0, renormalize=True, allow_degenerate=False)
    assert all(np.allclose(plain[k], learned[k] / learned[k].mean()) for k in learned)
    assert weights_for_loss(learned, 0.5, renormalize=False, allow_degenerate=False)["q0"][:2].tolist() == [1.0, 0.5]
    collapsed = {k: np.full(12, 1e-4, np.float32) for k in learned}  # the learner masked everything
    with pytest.raises(KPODInputError, match="degenerate"):
        weights_for_loss(collapsed, 0.5, renormalize=True, allow_degenerate=False)
    with pytest.warns(UserWarning, match="degenerate"):
        assert weights_for_loss(collapsed, 0.5, renormalize=True, allow_degenerate=True)["q1"].mean() == pytest.approx(1.0)


def test_average_last_saves_the_mean_of_the_last_steps_weights_and_survives_a_resume(tmp_path, monkeypatch):
    import importlib

    train_module = importlib.import_module("kpod_ops.pipeline.train")  # the package exports a function of that name

    examples = list(_examples())  # 8 examples, batch 2: 4 steps per epoch, 8 in all; the last 4 averaged
    settings = TrainSettings(epochs=2, batch_size=2, micro_batch_size=2, lr=1e-2, checkpoint_every=100, average_last=0.5,
                             min_lr_ratio=0.0)
    assert settings.averaged_steps(8) == 4 and TrainSettings().averaged_steps(8) == 0
    snapshots, accumulate = [], train_module._accumulate_average

    def spy(average, model, count):
        snapshots.append({n: p.detach().clone() for n, p in model.named_parameters()})
        accumulate(average, model, count)

    monkeypatch.setattr(train_module, "_accumulate_average", spy)
    model = _student()
    history = train(model, _tok(), examples, settings, progress=False, say=lambda _: None).history
    assert len(snapshots) == 4 and history[-1]["lr"] < history[0]["lr"]
    for name, p in model.named_parameters():
        torch.testing.assert_close(p, torch.stack([s[name] for s in snapshots]).mean(0), rtol=1e-6, atol=1e-7)
    # a run stopped after epoch 1 (step 4: no step averaged yet) and one stopped mid-average resume to the same model
    monkeypatch.setattr(train_module, "_accumulate_average", accumulate)
    for stop_after in (4, 6):
        folder = tmp_path / f"stop{stop_after}"
        partial = TrainSettings(**{**settings.__dict__, "checkpoint_every": 1})
        step = train_module.torch.optim.AdamW.step

        def stopping_step(self, *a, _calls=[0], _stop=stop_after, _step=step, **k):  # noqa: B006 (a counter)
            if _calls[0] == _stop:
                raise KeyboardInterrupt
            _calls[0] += 1
            return _step(self, *a, **k)

        monkeypatch.setattr(train_module.torch.optim.AdamW, "step", stopping_step)
        with pytest.raises(KeyboardInterrupt):
            train(_student(), _tok(), examples, partial, checkpoint_dir=folder, run_hash="h", progress=False, say=lambda _: None)
        monkeypatch.setattr(train_module.torch.optim.AdamW, "step", step)
        resumed = _student()
        result = train(resumed, _tok(), examples, partial, checkpoint_dir=folder, run_hash="h", progress=False, say=lambda _: None)
        assert result.resumed_at_step == stop_after
        assert all(torch.equal(p, q) for p, q in zip(resumed.parameters(), model.parameters()))
