"""DeepSpeed ZeRO through ``KPODTrainer``: 2 processes (CPU, gloo) take the same SGD steps as one process.

``TrainingArguments(deepspeed=<ZeRO config>)`` under torchrun, ``DS_ACCELERATOR=cpu``: accelerate
wraps the model in a ``DeepSpeedEngine``. Under ZeRO-3 the LM head's weight is partitioned between
steps (``ds_id`` set, no elements); the fused linear loss runs inside a call of the head, where
DeepSpeed's hooks gather the weight (and again for backward) and reduce-scatter its gradient. The
reference is one process without DeepSpeed, with the same global batch of 4.

DeepSpeed's CPU backend JIT-compiles a shared-memory collective op (``deepspeed_shm_comm``) at
``deepspeed.initialize``; the worker marks that op unavailable (``deepspeed.ops.__compatible_ops__``,
the switch DeepSpeed itself reads), so the collectives go through torch.distributed's gloo and the
test needs no C++ compiler.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from training_helpers import assert_trained_alike

from kpod_ops.errors import KPODInputError
from kpod_ops.integrations import fsdp

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

WORKER = textwrap.dedent(
    """
    import os, sys, warnings
    sys.path.insert(0, {tests!r})
    warnings.filterwarnings("ignore")
    import torch
    from test_hf import SequentialKPODTrainer, tiny_data, tiny_llama, train_args
    from kpod_ops.data import KPODCollator

    WORLD = int(os.environ.get("WORLD_SIZE", "1"))
    STEPS = 3
    STAGE = int(sys.argv[2])  # 0: one process without DeepSpeed


    def whole(model):
        params = list(model.parameters())
        if any(hasattr(p, "ds_id") for p in params):
            import deepspeed

            with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
                return {{n: p.detach().clone() for n, p in model.named_parameters()}}
        return {{n: p.detach().clone() for n, p in model.named_parameters()}}


    def trainer(tok, tokenized, weights, out, fused):
        model = tiny_llama(tok)
        extra = {{}}
        if STAGE:
            extra = dict(ddp_backend="gloo", deepspeed={{
                "zero_optimization": {{"stage": STAGE}}, "train_micro_batch_size_per_gpu": "auto",
                "train_batch_size": "auto", "gradient_accumulation_steps": "auto", "gradient_clipping": "auto",
                "zero_allow_untested_optimizer": True,  # torch's SGD, as in the reference
            }})
        args = train_args(out, per_device_train_batch_size=4 // WORLD, max_steps=STEPS, learning_rate=0.5, optim="sgd",
                          max_grad_norm=1.0, **extra)
        run = SequentialKPODTrainer(model, args, KPODCollator(tok, weights), train_dataset=tokenized,
                                    normaliser="token", fused_linear=fused)
        run.train()
        assert run.is_deepspeed_enabled == bool(STAGE)
        head = model.lm_head.weight  # between steps: a ZeRO-3 partition has ds_id and no elements
        return whole(model), (hasattr(head, "ds_id"), head.numel())


    if __name__ == "__main__":
        if STAGE:
            import deepspeed.ops

            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False  # gloo collectives, no JIT build
        tok, tokenized, weights = tiny_data(12)
        result = {{"start": whole(tiny_llama(tok))}}
        for fused in ((True, False) if STAGE != 2 else (True,)):
            result["fused" if fused else "logits"] = trainer(tok, tokenized, weights, sys.argv[1] + str(fused), fused)
        if int(os.environ.get("RANK", "0")) == 0:
            torch.save(result, sys.argv[1] + ".pt")
        if torch.distributed.is_initialized():  # a process group left to exit can abort its gloo threads
            torch.distributed.destroy_process_group()
    """
)


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT),
            "DS_ACCELERATOR": "cpu"}


def _run(cmd: list[str], cwd: Path) -> None:
    proc = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]


# ---------------------------------------------------------------------------------------------- fast
def _trainer(config: dict | None = None) -> SimpleNamespace:
    plugin = SimpleNamespace(hf_ds_config=SimpleNamespace(config=config or {"zero_optimization": {"stage": 3}}))
    state = SimpleNamespace(deepspeed_plugin=plugin, distributed_type="DEEPSPEED")
    return SimpleNamespace(accelerator=SimpleNamespace(state=state), args=SimpleNamespace(fsdp_plugin_args=None),
                           is_deepspeed_enabled=True)


def test_deepspeed_zero_is_accepted_and_its_tensor_parallelism_refused():
    assert fsdp.trainer_sharding_refusal(_trainer()) is None
    why = fsdp.trainer_sharding_refusal(_trainer({"tensor_parallel": {"autotp_size": 2}}))
    assert "autotp_size=2" in why and "vocabulary row" in why
    with pytest.raises(KPODInputError, match="tensor parallelism"):
        fsdp.check_trainer_sharding(_trainer({"tensor_parallel": {"autotp_size": 2}}))


def test_a_zero3_weight_is_read_only_where_it_is_gathered():
    """The patch accepts a ZeRO-3 head; a partition that is not gathered inside the head's call (no DeepSpeed hooks)
    or read outside it (``hidden_and_head``) is refused instead of read as an empty matrix."""
    from kpod_ops.integrations.linear_patch import supports
    from kpod_ops.models import tiny_student, tiny_tokenizer

    model = tiny_student(tiny_tokenizer(), hidden_size=32, num_layers=1, num_heads=2)
    head = model.lm_head
    head.weight.ds_id = 0  # what ZeRO-3 marks its parameters with; partitioned: not AVAILABLE
    head.weight.ds_status = SimpleNamespace(name="NOT_AVAILABLE")
    head.weight.ds_numel = head.weight.numel()
    assert supports(model)[0]
    with pytest.raises(KPODInputError, match="ZeRO-3 partition"):
        fsdp.through_head(head, torch.zeros(1, 2, 32), lambda h: h.sum())
    with pytest.raises(KPODInputError, match="ZeRO-3 partition.*apply_kpod_loss"):
        fsdp.require_whole(head.weight, "here")
    head.weight.ds_status = SimpleNamespace(name="AVAILABLE")  # gathered: the loss runs inside the head's call
    calls = []
    head.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape))  # where DeepSpeed gathers
    out = fsdp.through_head(head, torch.ones(1, 2, 32), lambda h: h.sum())
    assert float(out) == 64.0 and calls == [(1, 2, 32)] and "forward" not in head.__dict__  # the head's own forward


# ---------------------------------------------------------------------------------------------- slow
@pytest.mark.slow
def test_kpod_trainer_under_zero3_and_zero2_with_two_processes_equals_one(tmp_path):
    pytest.importorskip("deepspeed")
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(tests=str(HERE)))
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
    _run([sys.executable, str(script), str(tmp_path / "one"), "0"], tmp_path)
    _run([*torchrun, str(tmp_path / "zero3"), "3"], tmp_path)
    _run([*torchrun, str(tmp_path / "zero2"), "2"], tmp_path)
    one, zero3, zero2 = (torch.load(tmp_path / f"{name}.pt") for name in ("one", "zero3", "zero2"))
    start = one["start"]
    # fp32 throughout; the processes' gradients are summed in another order than one process's: the runs agree to
    # float rounding (measured: at most ~1e-5 of how far training moved a tensor), well inside assert_trained_alike
    for loss in ("fused", "logits"):
        params, (partitioned, numel) = zero3[loss]
        assert partitioned and numel == 0  # ZeRO-3 held the LM head as a partition between steps
        assert one[loss][1] == (False, start["lm_head.weight"].numel())
        assert_trained_alike(params, one[loss][0], start)
    params, (partitioned, _) = zero2["fused"]
    assert not partitioned  # ZeRO-2 keeps every parameter whole
    assert_trained_alike(params, one["fused"][0], start)
    # the fused loss and the logits loss are the same loss: one process's two runs agree as well
    assert_trained_alike(one["logits"][0], one["fused"][0], start)
