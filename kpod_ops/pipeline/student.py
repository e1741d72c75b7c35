"""Building or loading the student and its tokenizer, saving and reloading it in Hugging Face format."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .._optional import require
from ..errors import KPODInputError


def new_student(section: dict[str, Any], seed: int) -> tuple[torch.nn.Module, Any]:
    """(model, tokenizer) as ``student`` describes: ``tiny`` (built in code), ``smollm2`` or ``dir``."""
    kind = section["kind"]
    if kind == "tiny":
        from ..models import tiny_student, tiny_tokenizer

        tok = tiny_tokenizer()
        model = tiny_student(
            tok, hidden_size=section["hidden_size"], num_layers=section["num_layers"], num_heads=section["num_heads"], seed=seed
        )
        return model, tok
    if kind == "smollm2":
        from ..models import load_smollm2, load_smollm2_tokenizer

        tok = load_smollm2_tokenizer()
        model = _forget_gguf(load_smollm2(dtype=torch.float32))
    else:
        model, tok = load_student_dir(section["path"], argument="--student")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return model, tok


def _forget_gguf(model: torch.nn.Module) -> torch.nn.Module:
    """A model read from GGUF holds de-quantised float weights but is still marked as quantised,
    which makes ``save_pretrained`` refuse it; drop the marker so it saves as a plain model."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model


def load_student_dir(path: str | Path | None, argument: str = "student") -> tuple[torch.nn.Module, Any]:
    """A causal LM and its tokenizer from a Hugging Face model folder; a clear error when it is not one."""
    folder = Path(path) if path is not None else None
    if folder is None or not folder.is_dir():
        raise KPODInputError(f"{argument}: expected a Hugging Face model directory, got {path} (not a directory)")
    if not (folder / "config.json").is_file():
        raise KPODInputError(f"{argument}: expected a Hugging Face model directory with config.json, got {folder} without one")
    require("transformers", extra="hf", feature="loading a student")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    except (OSError, ValueError, KeyError) as exc:
        raise KPODInputError(f"{argument}: expected a loadable causal LM and tokenizer in {folder}, got {type(exc).__name__}: {exc}") from None
    if not getattr(tok, "is_fast", False):
        raise KPODInputError(f"{argument}: expected a fast tokenizer (tokenizer.json) in {folder}, got {type(tok).__name__}")
    return model, tok


def add_lora(model: torch.nn.Module, r: int, alpha: int) -> torch.nn.Module:
    """LoRA adapters on every linear layer (``peft``); the base weights are frozen."""
    require("peft", extra="hf", feature="LoRA students")
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, target_modules="all-linear", task_type="CAUSAL_LM"))


def plain_model(model: torch.nn.Module) -> torch.nn.Module:
    """The model with any LoRA adapters merged in (a plain ``transformers`` model)."""
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model


def save_student(model: torch.nn.Module, tokenizer: Any, folder: Path) -> Path:
    """``save_pretrained`` (safetensors) of the model and its tokenizer into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder
