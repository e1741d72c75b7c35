"""Data-parallel KPOD training: 2 processes (torchrun, CPU, gloo) take the same optimiser steps as one
process with the same global batch, and as one process with gradient accumulation 2 — for the KPOD
loss with token weights and rationales truncated by a schedule that changes stage during the run
(KPODCallback on every rank), with both normalisers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
STEPS = 3

WORKER = textwrap.dedent(
    """
    import sys, warnings
    sys.path.insert(0, {tests!r})
    warnings.filterwarnings("ignore")
    import torch
    from test_hf import SequentialKPODTrainer, tiny_data, tiny_llama, tiny_schedule, train_args
    from kpod_ops.data import KPODCollator


    def run(out, batch, accumulation, normaliser, steps):
        tok, tokenized, weights = tiny_data(8)
        model = tiny_llama(tok)
        args = train_args(out + "_" + normaliser, per_device_train_batch_size=batch,
                          gradient_accumulation_steps=accumulation, max_steps=steps, learning_rate=0.5, optim="sgd",
                          max_grad_norm=1.0,
                          ddp_backend="gloo" if "LOCAL_RANK" in __import__("os").environ else None)
        # the schedule (2 epochs of 2 steps) truncates rationales in epoch 1 and moves to stage 2 at step 3
        collator = KPODCollator(tok, weights)
        trainer = SequentialKPODTrainer(model, args, collator, train_dataset=tokenized, normaliser=normaliser,
                                        schedule=tiny_schedule(tokenized, n_epochs=2))
        trainer.train()
        return torch.cat([p.detach().flatten() for p in model.parameters()])


    if __name__ == "__main__":
        out, batch, accumulation, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
        result = {{n: run(out, batch, accumulation, n, steps) for n in ("sequence", "token")}}
        if int(__import__("os").environ.get("RANK", "0")) == 0:
            torch.save(result, out + ".pt")
        if torch.distributed.is_initialized():  # a process group left to exit can abort its gloo threads
            torch.distributed.destroy_process_group()
    """
)


def _run(cmd: list[str], tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]


def _launcher(name: str) -> str:
    path = shutil.which(name, path=os.path.dirname(sys.executable)) or shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed")
    return path


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The worker script and the 1-process run with the whole global batch (4) per step."""
    folder = tmp_path_factory.mktemp("ddp")
    script = folder / "worker.py"
    script.write_text(WORKER.format(tests=str(HERE)))
    _run([sys.executable, str(script), str(folder / "one"), "4", "1", str(STEPS)], folder)
    one = torch.load(folder / "one.pt")
    # the two normalisers give different updates, so the comparisons are not between untrained models
    assert not torch.allclose(one["sequence"], one["token"])
    return folder, script, one


def _assert_equal(result: dict, one: dict) -> None:
    for normaliser in ("sequence", "token"):
        torch.testing.assert_close(result[normaliser], one[normaliser], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_two_processes_equal_one_process_and_gradient_accumulation(one_process):
    folder, script, one = one_process
    _run([_launcher("torchrun"), "--standalone", "--nproc_per_node=2", str(script), str(folder / "ddp"), "2", "1",
          str(STEPS)], folder)
    _run([sys.executable, str(script), str(folder / "accum"), "2", "2", str(STEPS)], folder)
    _assert_equal(torch.load(folder / "ddp.pt"), one)
    _assert_equal(torch.load(folder / "accum.pt"), one)


@pytest.mark.slow
def test_accelerate_launch_with_two_cpu_processes_equals_one_process(one_process):
    """``accelerate launch --multi_gpu --num_processes 2`` starts 2 processes through torchrun (gloo on a CPU-only
    machine). ``--cpu --num_processes 2`` would start only one: accelerate's multi-CPU launch needs MPI
    (``--mpirun_hostfile`` and an ``mpirun``)."""
    folder, script, one = one_process
    _run([_launcher("accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
          "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0", str(script),
          str(folder / "accelerate"), "2", "1", str(STEPS)], folder)
    _assert_equal(torch.load(folder / "accelerate.pt"), one)
