"""Data layer: examples, JSONL I/O, built-in datasets, tokenisation with step spans, collators."""

from .answers import answers_match, extract_answer, parse_number
from .arith import load_arith_cot, load_arith_text
from .builtin import BUILTIN_NAMES, fixture_path, load_builtin, load_gsm8k_fixture
from .collator import KPODCollator, KPODSeq2SeqCollator
from .example import CoTExample
from .gsm_symbolic import load_gsm_symbolic
from .guard import KPODLabels, is_guarded, unguard
from .jsonl import ReadResult, read_jsonl, strip_calculator_annotations, write_jsonl
from .records import as_tokenized, to_record, validate_tokenized
from .summary import DataSummary, summarize_examples
from .tokenize import DEFAULT_ANSWER_TEMPLATE, DEFAULT_TEMPLATE, tokenize_example, tokenize_examples
from .tokenized import TokenizedExample

__all__ = [
    "BUILTIN_NAMES",
    "DEFAULT_ANSWER_TEMPLATE",
    "DEFAULT_TEMPLATE",
    "CoTExample",
    "DataSummary",
    "KPODCollator",
    "KPODLabels",
    "KPODSeq2SeqCollator",
    "ReadResult",
    "TokenizedExample",
    "answers_match",
    "as_tokenized",
    "extract_answer",
    "fixture_path",
    "is_guarded",
    "load_arith_cot",
    "load_arith_text",
    "load_builtin",
    "load_gsm8k_fixture",
    "load_gsm_symbolic",
    "parse_number",
    "read_jsonl",
    "strip_calculator_annotations",
    "summarize_examples",
    "to_record",
    "tokenize_example",
    "tokenize_examples",
    "unguard",
    "validate_tokenized",
    "write_jsonl",
]
