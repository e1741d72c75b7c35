"""`Trainer(..., torch_compile=True)` with a model patched by `apply_kpod_loss`, and `KPODTrainer` with
`torch_compile=True`: they train the KPOD loss with the same per-step losses as without compilation
(dynamo's `aot_eager` backend: the same tracing as inductor, without the slow C++ code generation)."""

from __future__ import annotations

import pytest
from test_hf import step_losses, tiny_data, tiny_llama, tiny_schedule, train_args
from transformers import Trainer

from kpod_ops import KPODCollator, KPODInputError
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


def test_kpod_trainer_compiles_with_a_schedule(tmp_path):
    tok, tokenized, weights = tiny_data(8)
    losses = {}
    for compiled in (False, True):
        trainer = KPODTrainer(tiny_llama(tok), _args(tmp_path / str(compiled), compiled, num_train_epochs=2),
                              train_dataset=tokenized, processing_class=tok, token_weights=weights,
                              schedule=tiny_schedule(tokenized, n_epochs=2), fused_linear=False)
        trainer.train()
        losses[compiled] = step_losses(trainer)
    assert len(losses[True]) == 4
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
