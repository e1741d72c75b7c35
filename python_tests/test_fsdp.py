"""FSDP2 (``fully_shard``): 2 processes (CPU, gloo) take the same SGD steps as one unsharded process.

The paths users take: a plain loop with the model patched before ``fully_shard``; a model sharded
first and patched after, with the LM head in the root unit, in a unit of its own, and in
accelerate's ``[final_norm, lm_head]`` unit (the loss then runs inside the head's call so that
FSDP2 gathers its weight); ``KPODTrainer`` with FSDP2 set up by accelerate from
``TrainingArguments(fsdp=True, fsdp_config={"fsdp_version": 2})`` (patched before accelerate
wraps the model) and with a model the user sharded before the trainer patched it; and the
distillation loop of ``kpod distill --fsdp`` (uneven last batches, a checkpoint resumed, the
student whole again after training) and the command itself under torchrun.

accelerate enables FSDP only for GPU / accelerator processes; on CPU the worker turns it on after
accelerate set up the processes (``CPUFSDPTrainer``), which is what accelerate does on GPUs.
"""

from __future__ import annotations

import json
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
from kpod_ops.pipeline import distributed

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

LOOP_WORKER = textwrap.dedent(
    """
    import os, sys, warnings
    sys.path.insert(0, {tests!r})
    warnings.filterwarnings("ignore")
    import torch
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor
    from test_hf import SequentialKPODTrainer, tiny_data, tiny_llama, train_args
    from kpod_ops.data import KPODCollator
    from kpod_ops.integrations.hf import apply_kpod_loss

    WORLD = int(os.environ.get("WORLD_SIZE", "1"))
    RANK = int(os.environ.get("RANK", "0"))
    STEPS = 3


    def whole(model):
        return {{n: (p.full_tensor() if isinstance(p, DTensor) else p).detach().clone()
                 for n, p in model.named_parameters()}}


    def shard(model, head):
        for layer in model.model.layers:
            fully_shard(layer)
        if head == "own":
            fully_shard(model.lm_head)
        elif head == "tail":  # accelerate's unit of the final norm and the LM head
            fully_shard([model.model.norm, model.lm_head], reshard_after_forward=False)
        fully_shard(model)


    def loop(tok, tokenized, weights, when, head):
        model = tiny_llama(tok)
        if when == "before":
            apply_kpod_loss(model, fused_linear=True)
        if WORLD > 1:
            shard(model, head)
            outside = type(model.lm_head.weight).__name__  # a DTensor between steps
        if when == "after":
            apply_kpod_loss(model, fused_linear=True)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        collator = KPODCollator(tok, weights)
        for step in range(STEPS):
            batch = collator(tokenized[4 * step: 4 * step + 4])
            count = (batch["labels"][:, 1:] != -100).sum()  # the token mean of the global batch
            mine = {{k: v[RANK * 4 // WORLD: (RANK + 1) * 4 // WORLD] for k, v in batch.items()}}
            loss = model(**mine, num_items_in_batch=count).loss
            (loss * WORLD).backward()  # FSDP2 averages the processes' gradients: sum them instead
            optimizer.step()
            optimizer.zero_grad()
        return whole(model), (outside if WORLD > 1 else None)


    class CPUFSDPTrainer(SequentialKPODTrainer):
        def create_accelerator_and_postprocess(self):
            super().create_accelerator_and_postprocess()
            if WORLD > 1:  # what accelerate sets up for GPU processes from args.fsdp_plugin_args
                from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
                state = self.accelerator.state
                state.fsdp_plugin = FullyShardedDataParallelPlugin(**self.args.fsdp_plugin_args)
                state.distributed_type = DistributedType.FSDP
                self.is_fsdp_enabled = True


    def trainer(tok, tokenized, weights, out, normaliser, prewrapped):
        model = tiny_llama(tok)
        extra = {{}}
        if WORLD > 1:
            config = {{"fsdp_version": 2, "transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"]}}
            if prewrapped:  # sharded by the user; KPODTrainer patches it and accelerate keeps the units
                shard(model, "root")
                config = {{"fsdp_version": 2, "auto_wrap_policy": "NO_WRAP"}}  # (no LlamaDecoderLayer left to find)
            extra = dict(fsdp=True, fsdp_config=config, ddp_backend="gloo")
        args = train_args(out, per_device_train_batch_size=4 // WORLD, max_steps=STEPS, learning_rate=0.5, optim="sgd",
                          max_grad_norm=1.0, **extra)
        run = CPUFSDPTrainer(model, args, KPODCollator(tok, weights), train_dataset=tokenized, normaliser=normaliser,
                             fused_linear=True)
        run.train()
        assert (not run.is_fsdp_enabled) == (WORLD == 1)
        return whole(model), type(model.lm_head).__name__


    if __name__ == "__main__":
        tok, tokenized, weights = tiny_data(12)
        result = {{"start": whole(tiny_llama(tok))}}
        for when, head in (("before", "root"), ("after", "root"), ("after", "own"), ("after", "tail")):
            result[when + "-" + head] = loop(tok, tokenized, weights, when, head)
        result["trainer-token"] = trainer(tok, tokenized, weights, sys.argv[1] + "_t", "token", False)
        result["trainer-sequence-prewrapped"] = trainer(tok, tokenized, weights, sys.argv[1] + "_s", "sequence", True)
        if RANK == 0:
            torch.save(result, sys.argv[1] + ".pt")
        if torch.distributed.is_initialized():  # a process group left to exit can abort its gloo threads
            torch.distributed.destroy_process_group()
    """
)

TRAIN_WORKER = textwrap.dedent(
    """
    import sys
    import numpy as np
    import torch
    from kpod_ops.data import load_builtin, tokenize_examples
    from kpod_ops.models import tiny_student, tiny_tokenizer
    from kpod_ops.pipeline import TrainSettings, distributed, train

    out, results = sys.argv[1], {}
    with distributed.process_group(fsdp=sys.argv[2] == "fsdp"):
        tok = tiny_tokenizer()
        # 11 examples: the last global batch of 4 has 3 sequences (2 micro-batches on one process, 1 on the other)
        examples = tokenize_examples(load_builtin("arith-cot", "train", n=11, seed=5), tok)
        rng = np.random.default_rng(0)
        weights = {e.id: rng.uniform(0.2, 1.0, e.rationale_len).astype(np.float32) for e in examples}
        for epochs in (1, 2):  # the second run resumes from the first one's checkpoint (parameters, AdamW, mean)
            model = tiny_student(tok, hidden_size=32, num_layers=2, num_heads=2, seed=1)
            results.setdefault("start", {n: p.detach().clone() for n, p in model.named_parameters()})
            settings = TrainSettings(epochs=epochs, batch_size=4, micro_batch_size=1, lr=1e-2, normaliser="token", seed=3,
                                     average_last=0.5)
            history = train(model, tok, examples, settings, token_weights=weights, progress=False, say=print,
                            checkpoint_dir=out + "_checkpoints").history
        results["end"] = {n: p.detach().clone() for n, p in model.named_parameters()}
        results["loss"] = [h["loss"] for h in history]
        results["classes"] = sorted({type(m).__name__ for m in model.modules()})
        if distributed.is_main():
            torch.save(results, out + ".pt")
    """
)


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}


def _run(cmd: list[str], cwd: Path) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout


def _torchrun(*argv: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *argv]


# ---------------------------------------------------------------------------------------------- fast
def test_trainer_sharding_is_checked():
    """FSDP2 trains; FSDP1 and an ``args.fsdp`` that accelerate left off are refused, each saying why (DeepSpeed:
    test_deepspeed.py)."""
    def trainer(**kw):
        state = SimpleNamespace(fsdp_plugin=SimpleNamespace(fsdp_version=kw.pop("version", 2)), distributed_type="MULTI_CPU")
        return SimpleNamespace(accelerator=SimpleNamespace(state=state), args=SimpleNamespace(fsdp_plugin_args=kw.pop("args", None)),
                               **kw)

    assert fsdp.trainer_sharding_refusal(trainer()) is None
    assert fsdp.trainer_sharding_refusal(trainer(is_fsdp_enabled=True)) is None
    assert "FSDP version 1" in fsdp.trainer_sharding_refusal(trainer(is_fsdp_enabled=True, version=1))
    why = fsdp.trainer_sharding_refusal(trainer(args={"fsdp_version": 2}))
    assert "accelerate did not enable FSDP" in why and "MULTI_CPU" in why
    with pytest.raises(KPODInputError, match="FSDP version 1"):
        fsdp.check_trainer_sharding(trainer(is_fsdp_enabled=True, version=1))


def test_fsdp_with_one_process_is_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(KPODInputError, match="--fsdp.*several processes"), distributed.process_group(fsdp=True):
        pass
    assert not distributed.sharded()


# ---------------------------------------------------------------------------------------------- slow
@pytest.mark.slow
def test_loops_and_trainers_with_two_processes_equal_one(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(LOOP_WORKER.format(tests=str(HERE)))
    _run([sys.executable, str(script), str(tmp_path / "one")], tmp_path)
    _run(_torchrun(str(script), str(tmp_path / "two")), tmp_path)
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    start = one["start"]
    reference = one["before-root"][0]  # one process, no sharding
    for key in ("before-root", "after-root", "after-own", "after-tail"):
        params, outside = two[key]
        assert outside == "DTensor"  # the LM head's weight is sharded between steps
        assert_trained_alike(params, reference, start)
    for key in ("trainer-token", "trainer-sequence-prewrapped"):
        assert_trained_alike(two[key][0], one[key][0], start)
    # accelerate made the LM head an FSDP2 unit (with the final norm): the loss ran inside the head's call
    assert two["trainer-token"][1] == "FSDPLinear" and two["trainer-sequence-prewrapped"][1] == "Linear"
    # the two normalisers give different updates, so the comparisons are not between untrained models
    first = "model.layers.0.mlp.up_proj.weight"
    assert not torch.allclose(one["trainer-token"][0][first], one["trainer-sequence-prewrapped"][0][first])


@pytest.mark.slow
def test_distillation_loop_with_two_processes_equals_one(tmp_path):
    """Uneven last batches (as many micro-batches on every process), a resumed checkpoint, the student whole after."""
    script = tmp_path / "train_worker.py"
    script.write_text(TRAIN_WORKER)
    _run([sys.executable, str(script), str(tmp_path / "one"), "ddp"], tmp_path)
    stdout = _run(_torchrun(str(script), str(tmp_path / "two"), "fsdp"), tmp_path)
    assert "FSDP2, the student sharded" in stdout and "resuming from the checkpoint at optimiser step 3" in stdout
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert_trained_alike(two["end"], one["end"], one["start"])
    torch.testing.assert_close(torch.tensor(two["loss"]), torch.tensor(one["loss"]), rtol=1e-5, atol=0)
    assert two["classes"] == one["classes"] and not any(c.startswith("FSDP") for c in two["classes"])


@pytest.mark.slow
def test_kpod_distill_fsdp_under_torchrun(tmp_path):
    from test_ddp_distill import CONFIG, _prepared_copy

    from kpod_ops.cli import main
    from kpod_ops.data import load_builtin, write_jsonl

    data = tmp_path / "data.jsonl"
    write_jsonl(load_builtin("arith-cot", "train", n=16, seed=3), data)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({**CONFIG, "train": {**CONFIG["train"], "micro_batch_size": 2}}))

    def argv(out):
        return ["distill", "--data", str(data), "--config", str(config), "--out", str(out), "--allow-degenerate", "--quiet"]

    assert main(argv(tmp_path / "one")) == 0
    two = _prepared_copy(tmp_path / "one", tmp_path / "two")  # the stages before training, reused
    stdout = _run(_torchrun("-m", "kpod_ops.cli", *argv(two), "--fsdp"), tmp_path)
    assert "FSDP2, the student sharded" in stdout and stdout.count("[report]") == 1
    assert json.loads((tmp_path / "two" / "report.json").read_text())["processes"] == 2
    from safetensors.torch import load_file

    start = load_file(str(tmp_path / "one" / "warmup" / "model" / "model.safetensors"))
    students = [load_file(str(tmp_path / run / "student" / "model.safetensors")) for run in ("two", "one")]
    assert_trained_alike(*students, start)
