"""`torchrun --nproc_per_node=2 kpod distill` (CPU, gloo) trains data-parallel: the 2-process student
equals the 1-process student with the same global batch, and the 1-process student with gradient
accumulation 2 — for the KPOD loss with token weights and schedule-truncated rationales, with the
per-sequence and the token normaliser — also after the 2-process run is killed mid-training and
resumed. Every stage that is not training is done once, by rank 0."""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_cli import TINY, _wait_for_checkpoint
from training_helpers import assert_trained_alike

from kpod_ops.cli import main
from kpod_ops.data import load_builtin, write_jsonl
from kpod_ops.errors import KPODInputError
from kpod_ops.models import tiny_student, tiny_tokenizer
from kpod_ops.pipeline import distill, distributed, merge, preset_config

ROOT = Path(__file__).resolve().parents[1]
# 2 epochs of 3 global batches of 4 sequences; the schedule truncates rationales in epoch 1
CONFIG = {**copy.deepcopy(TINY), "train": {**TINY["train"], "epochs": 2, "batch_size": 4, "micro_batch_size": 4}}
# the stages before training, shared by every run of a test (copied, so each run reuses them)
PREPARED = ("data", "warmup", "eval-before", "weights", "difficulty-softmax", "clusters", "schedule")


def _config(folder: Path, name: str, **train) -> Path:
    path = folder / f"{name}.json"
    config = copy.deepcopy(CONFIG)
    config["train"].update(train)
    path.write_text(json.dumps(config))
    return path


def _argv(data: Path, config: Path, out: Path) -> list[str]:
    return ["distill", "--data", str(data), "--config", str(config), "--out", str(out), "--allow-degenerate", "--quiet"]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}


def _torchrun(argv: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "kpod_ops.cli", *argv]


def _run(cmd: list[str], cwd: Path) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout


def _prepared_copy(source: Path, out: Path) -> Path:
    for name in PREPARED:
        shutil.copytree(source / name, out / name)
    return out


def _student(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run / "student" / "model.safetensors"))


def _assert_same_student(a: Path, b: Path) -> None:
    """``b`` trained to where ``a`` did, relative to how far both moved from the shared warmed-up start."""
    from safetensors.torch import load_file

    start = load_file(str(a / "warmup" / "model" / "model.safetensors"))
    assert_trained_alike(_student(b), _student(a), start)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The 1-process run with micro-batches of the whole global batch (every stage computed)."""
    folder = tmp_path_factory.mktemp("ddp_distill")
    data = folder / "data.jsonl"
    write_jsonl(load_builtin("arith-cot", "train", n=16, seed=3), data)
    out = folder / "one"
    assert main(_argv(data, _config(folder, "one"), out)) == 0
    return folder, data, out


def _trained_away_from_start(run: Path) -> None:
    from safetensors.torch import load_file

    start = load_file(str(run / "warmup" / "model" / "model.safetensors"))
    end = _student(run)
    assert max(float((end[k] - start[k]).abs().max()) for k in end) > 1e-3  # the runs compared really trained


@pytest.mark.slow
def test_two_processes_equal_one_process_and_gradient_accumulation(one_process):
    folder, data, one = one_process
    _trained_away_from_start(one)
    accum = _prepared_copy(one, folder / "accum")
    assert main(_argv(data, _config(folder, "accum", micro_batch_size=2), accum)) == 0
    ddp = _prepared_copy(one, folder / "ddp")
    stdout = _run(_torchrun(_argv(data, _config(folder, "ddp", micro_batch_size=2), ddp)), folder)
    assert "data-parallel (DDP) over 2 processes" in stdout
    assert stdout.count("[report]") == 1 and "reusing the finished stage" in stdout  # rank 0 speaks; stages reused
    report = json.loads((ddp / "report.json").read_text())
    assert report["processes"] == 2 and report["optimizer_steps"] == 6
    _assert_same_student(one, accum)
    _assert_same_student(one, ddp)
    # the logged loss of each step is the global one (summed over the processes), as in one process
    one_h, ddp_h = (json.loads((r / "train" / "history.json").read_text()) for r in (one, ddp))
    assert [h["given_steps"] for h in one_h] == [h["given_steps"] for h in ddp_h]
    torch.testing.assert_close(torch.tensor([h["loss"] for h in ddp_h]), torch.tensor([h["loss"] for h in one_h]),
                               rtol=1e-5, atol=0)


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and its descendants, deepest first (torchrun starts its workers in new sessions)."""
    for child in _children(pid):
        _kill_tree(child)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.mark.slow
def test_token_normaliser_and_resume_after_sigkill(one_process):
    """The token normaliser sums active tokens across processes; a killed 2-process run resumes on both ranks."""
    folder, data, one = one_process
    reference = _prepared_copy(one, folder / "token_one")
    assert main(_argv(data, _config(folder, "token_one", normaliser="token"), reference)) == 0
    out = _prepared_copy(one, folder / "token_ddp")
    cmd = _torchrun(_argv(data, _config(folder, "token_ddp", normaliser="token", micro_batch_size=2), out))
    proc = subprocess.Popen(cmd, cwd=folder, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        step = _wait_for_checkpoint(out, proc)
        _kill_tree(proc.pid)  # both workers (each in its own session) and torchrun
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            _kill_tree(proc.pid)
    assert step < 6 and not (out / "train" / "stage.json").exists()  # killed in the middle of training
    stdout = _run(cmd, folder)
    assert "resuming from the checkpoint" in stdout
    assert json.loads((out / "train" / "stage.json").read_text())["resumed_at_step"] >= step
    _assert_same_student(reference, out)
    sa, sb = _student(one), _student(reference)  # the token normaliser is a different update from the sequence one
    assert not all(torch.allclose(sa[k], sb[k], rtol=1e-4, atol=1e-5) for k in sa)


TRAIN_WORKER = """
import sys
import numpy as np
import torch
from kpod_ops.data import load_builtin, tokenize_examples
from kpod_ops.models import tiny_student, tiny_tokenizer
from kpod_ops.pipeline import TrainSettings, train
from kpod_ops.pipeline import distributed

out, results = sys.argv[1], {}
if int(__import__("os").environ.get("WORLD_SIZE", "1")) > 1:
    torch.distributed.init_process_group("gloo")
tok = tiny_tokenizer()
# 9 examples: the last global batch of 4 has 1 sequence (one process gets none: a zero-weight pass);
# 11 examples: the last has 3 (1 and 2 sequences: different numbers of micro-batches per process)
for n in (9, 11):
    examples = tokenize_examples(load_builtin("arith-cot", "train", n=n, seed=5), tok)
    rng = np.random.default_rng(0)
    weights = {e.id: rng.uniform(0.2, 1.0, e.rationale_len).astype(np.float32) for e in examples}
    model = tiny_student(tok, hidden_size=32, num_layers=2, num_heads=2, seed=1)
    settings = TrainSettings(epochs=1, batch_size=4, micro_batch_size=1, lr=1e-2, normaliser="token", seed=3)
    history = train(model, tok, examples, settings, token_weights=weights, progress=False, say=lambda m: None).history
    results[n] = (torch.cat([p.detach().flatten() for p in model.parameters()]), [h["loss"] for h in history])
if distributed.is_main():
    torch.save(results, out)
if distributed.world_size() > 1:
    torch.distributed.destroy_process_group()
"""


@pytest.mark.slow
def test_short_last_batches_split_unevenly_across_processes(tmp_path):
    """The last global batch of an epoch may leave a process fewer micro-batches than the other, or none."""
    script = tmp_path / "train_worker.py"
    script.write_text(TRAIN_WORKER)
    _run([sys.executable, str(script), str(tmp_path / "one.pt")], tmp_path)
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
          str(tmp_path / "ddp.pt")], tmp_path)
    one, ddp = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "ddp.pt")
    start = tiny_student(tiny_tokenizer(), hidden_size=32, num_layers=2, num_heads=2, seed=1)  # the worker's start
    flat_start = {"all": torch.cat([p.detach().flatten() for p in start.parameters()])}
    for n in (9, 11):
        assert_trained_alike({"all": ddp[n][0]}, {"all": one[n][0]}, flat_start)
        torch.testing.assert_close(torch.tensor(ddp[n][1]), torch.tensor(one[n][1]), rtol=1e-5, atol=0)
        assert len(one[n][1]) == 3


def test_global_batch_must_split_across_processes(tmp_path, monkeypatch):
    """Checked before any stage runs: 4 sequences cannot be split into 3 processes × micro-batches of 2."""
    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    config = merge(preset_config("quick"), {**CONFIG, "train": {**CONFIG["train"], "micro_batch_size": 2}})
    with pytest.raises(KPODInputError, match=r"train\.batch_size.*2 × 3"):
        distill(config, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_without_the_torchrun_environment_or_with_fsdp_is_a_clear_error(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    argv = ["distill", "--preset", "quick", "--out", str(out), "--quiet"]
    for key in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "WORLD_SIZE=2" in err and "torchrun" in err and "RANK" in err
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert main(["compare", "--preset", "quick", "--seeds", "1", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "ACCELERATE_USE_FSDP" in err and "DDP" in err
    assert not out.exists()
