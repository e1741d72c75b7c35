"""`Trainer(..., torch_compile=True)` with a model patched by `apply_kpod_loss`, and `KPODTrainer` /
`KPODSFTTrainer` (LoRA students too) with `torch_compile=True`: they train the KPOD loss with the same per-step losses as without compilation
(dynamo's `aot_eager` backend: the same tracing as inductor, without the slow C++ code generation)."""

from __future__ import annotations

import pytest
from test_hf import given, lora, step_losses, tiny_data, tiny_llama, tiny_schedule, train_args
from transformers import Trainer

from kpod_ops import KPODInputError
from kpod_ops.data import KPODCollator, to_record
from kpod_ops.integrations.hf import KPODTrainer, apply_kpod_loss

pytestmark = pytest.mark.slow


def _args(out, compiled: bool, **kw):
    extra = {"torch_compile": True, "torch_compile_backend": "aot_eager"} if compiled else {}
    return train_args(out, per_device_train_batch_size=4, learning_rate=1e-2, **extra, **kw)


@pytest.mark.parametrize("fused_linear", [False, "auto"])
def test_plain_trainer_with_the_patch_compiles(tmp_path, fused_linear):
    tok, tokenized, weights = tiny_data(8)
    losses = {}
    for compiled in (False, True):
        model = apply_kpod_loss(tiny_llama(tok), fused_linear=fused_linear)
        trainer = Trainer(model=model, args=_args(tmp_path / str(compiled), compiled, max_steps=3, remove_unused_columns=False),
                          data_collator=KPODCollator(tok, weights), train_dataset=tokenized)
        trainer.train()
        losses[compiled] = step_losses(trainer)
    assert len(losses[True]) == 3
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)


@pytest.mark.parametrize("student", ["full", "lora"])
def test_kpod_trainer_compiles_with_a_schedule(tmp_path, student):
    tok, tokenized, weights = tiny_data(8)
    losses = {}
    for compiled in (False, True):
        model = tiny_llama(tok) if student == "full" else lora(tiny_llama(tok))  # PEFT's forward is compiled too
        trainer = KPODTrainer(model, _args(tmp_path / str(compiled), compiled, num_train_epochs=2),
                              train_dataset=tokenized, processing_class=tok, token_weights=weights,
                              schedule=tiny_schedule(tokenized, n_epochs=2), fused_linear=False)
        trainer.train()
        losses[compiled] = step_losses(trainer)
    assert len(losses[True]) == 4
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)


def test_kpod_sft_trainer_compiles_with_lora(tmp_path):
    datasets = pytest.importorskip("datasets")
    trl = pytest.importorskip("trl")
    from kpod_ops.integrations.sft import KPODSFTTrainer

    tok, tokenized, weights = tiny_data(8)
    records = datasets.Dataset.from_list([to_record(te) for te in tokenized])
    losses = {}
    for compiled in (False, True):
        extra = {"torch_compile": True, "torch_compile_backend": "aot_eager"} if compiled else {}
        args = trl.SFTConfig(str(tmp_path / str(compiled)), report_to=[], use_cpu=True, save_strategy="no", logging_steps=1,
                             disable_tqdm=True, seed=0, max_length=None, per_device_train_batch_size=2, max_steps=2,
                             **extra)
        trainer = KPODSFTTrainer(lora(tiny_llama(tok)), args, KPODCollator(tok, weights, given(tokenized)),
                                 train_dataset=records, processing_class=tok)
        trainer.train()
        losses[compiled] = step_losses(trainer)
    assert len(losses[True]) == 2
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)


def test_unpatched_model_under_compile_says_what_to_change(tmp_path):
    """Without the patch the guarded labels reach the traced model code: dynamo stops with the KPOD message."""
    tok, tokenized, weights = tiny_data(4)
    trainer = Trainer(model=tiny_llama(tok), args=_args(tmp_path, True, max_steps=1, remove_unused_columns=False),
                      data_collator=KPODCollator(tok, weights), train_dataset=tokenized)
    with pytest.raises(Exception, match="apply_kpod_loss") as info:
        trainer.train()
    # dynamo re-raises errors from the code it traces as its own type, naming the original
    assert isinstance(info.value, KPODInputError) or str(info.value).startswith("KPODInputError: a KPOD batch")
