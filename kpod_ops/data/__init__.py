"""Data layer: examples, JSONL I/O, built-in datasets, steps, tokenisation with step spans, collators."""

from ..steps import split_answer, split_steps
from .answers import answers_match, extract_answer, parse_number
from .builtin import BUILTIN_NAMES, load_builtin
from .collator import KPODCollator, KPODSeq2SeqCollator
from .example import CoTExample
from .guard import unguard
from .jsonl import ReadResult, read_jsonl, strip_calculator_annotations, write_jsonl
from .records import to_record, validate_tokenized
from .summary import DataSummary, summarize_examples
from .tokenize import DEFAULT_ANSWER_TEMPLATE, DEFAULT_TEMPLATE, tokenize_example, tokenize_examples
from .tokenized import TokenizedExample
from .vocabulary import VocabularyReport, vocabulary_report

__all__ = [
    "BUILTIN_NAMES",
    "DEFAULT_ANSWER_TEMPLATE",
    "DEFAULT_TEMPLATE",
    "CoTExample",
    "DataSummary",
    "KPODCollator",
    "KPODSeq2SeqCollator",
    "ReadResult",
    "TokenizedExample",
    "VocabularyReport",
    "answers_match",
    "extract_answer",
    "load_builtin",
    "parse_number",
    "read_jsonl",
    "split_answer",
    "split_steps",
    "strip_calculator_annotations",
    "summarize_examples",
    "to_record",
    "tokenize_example",
    "tokenize_examples",
    "unguard",
    "validate_tokenized",
    "vocabulary_report",
    "write_jsonl",
]
