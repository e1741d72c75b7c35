"""JSONL reading with field mapping and validation, and writing.

Bad input is caught here, with the file and line, never deep inside training.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from ..errors import KPODInputError, bad_input
from ..steps import DEFAULT_ANSWER_MARKERS, split_answer
from .answers import answers_match, extract_answer
from .example import CoTExample

FIELDS = ("id", "question", "rationale", "answer")
_CALCULATOR = re.compile(r"<<[^<>]*>>")


class ReadResult(list):
    """The examples read (a ``list[CoTExample]``) plus what was left out.

    ``skipped`` lists ``(line_number, reason)`` for bad lines dropped under ``on_error="skip"``;
    ``filtered`` lists the ids dropped by ``filter_wrong_answers``.
    """

    def __init__(self, examples: Iterable[CoTExample] = (), skipped=None, filtered=None) -> None:
        super().__init__(examples)
        self.skipped: list[tuple[int, str]] = list(skipped or [])
        self.filtered: list[str] = list(filtered or [])


def strip_calculator_annotations(text: str) -> str:
    """Remove GSM8K's ``<<48/2=24>>`` calculator annotations."""
    return _CALCULATOR.sub("", text)


def _field(record: Mapping, key: str, name: str, where: str) -> str:
    if key not in record:
        raise KPODInputError(f"{where}: field '{key}' ({name}): expected a string, got nothing (missing)")
    value = record[key]
    if not isinstance(value, str):
        raise KPODInputError(f"{where}: field '{key}' ({name}): expected a string, got {type(value).__name__} {value!r:.60}")
    return value


def _parse_record(record: object, lineno: int, where: str, keys: Mapping[str, str | None], markers, strip_calc: bool):
    if not isinstance(record, dict):
        raise KPODInputError(f"{where}: expected a JSON object, got {type(record).__name__}")
    ex_id = f"line-{lineno}" if keys["id"] is None else _field(record, keys["id"], "id", where)
    question = _field(record, keys["question"], "question", where)
    raw = _field(record, keys["rationale"], "rationale", where)
    if strip_calc:
        raw = strip_calculator_annotations(raw)
    rationale, answer_part = split_answer(raw, markers)
    if keys["answer"] is None:
        answer = extract_answer(answer_part) if answer_part is not None else None
        if answer is None:
            raise KPODInputError(
                f"{where}: field '{keys['rationale']}' (rationale): expected an answer marker {list(markers)} followed by a number, got none"
            )
    else:
        answer = _field(record, keys["answer"], "answer", where)
    for name, value in (("id", ex_id), ("question", question), ("rationale", rationale), ("answer", answer)):
        if not value.strip():
            key = keys[name] if keys[name] is not None else name
            raise KPODInputError(f"{where}: field '{key}' ({name}): expected a non-empty string, got {value!r}")
    claimed = extract_answer(answer_part) if answer_part is not None else extract_answer(rationale)
    metadata = record.get("metadata") if isinstance(record.get("metadata"), dict) else {}
    return CoTExample(ex_id, question, rationale, answer.strip(), dict(metadata)), claimed


def read_jsonl(
    path: str | os.PathLike,
    *,
    fields: Mapping[str, str | None] | None = None,
    on_error: str = "raise",
    filter_wrong_answers: bool = False,
    markers: Sequence[str] = DEFAULT_ANSWER_MARKERS,
    strip_calculator: bool = False,
) -> ReadResult:
    """Read ``CoTExample``s from a JSONL file, one JSON object per line (blank lines allowed).

    ``fields`` maps our names (id, question, rationale, answer) to the file's keys, e.g.
    ``{"rationale": "answer", "answer": None}`` for raw GSM8K, where ``None`` for the answer takes
    it from the rationale's ``#### n`` marker and ``None`` for the id numbers lines (``line-7``).
    Any answer marker is split off the rationale. Bad JSON, a missing or non-string field, an empty
    rationale or a duplicate id raise ``KPODInputError`` naming the file and line, or with
    ``on_error="skip"`` are skipped and listed in ``result.skipped``. ``filter_wrong_answers`` drops
    examples whose rationale's own final answer disagrees with the gold answer (``result.filtered``).
    """
    if on_error not in ("raise", "skip"):
        raise bad_input("on_error", "'raise' or 'skip'", repr(on_error))
    keys: dict[str, str | None] = {name: name for name in FIELDS}
    for name, key in (fields or {}).items():
        if name not in FIELDS:
            raise bad_input("fields", f"keys among {FIELDS}", repr(name))
        if key is None and name in ("question", "rationale"):
            raise bad_input(f"fields[{name!r}]", "a JSON key", "None")
        keys[name] = key
    file = Path(path)
    if not file.is_file():
        raise bad_input("path", "an existing JSONL file", str(file))
    result = ReadResult()
    seen: dict[str, int] = {}
    with file.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{file}:{lineno}"
            try:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise KPODInputError(
                        f"{where}: expected a JSON object, got invalid JSON ({exc.msg} at column {exc.colno})"
                    ) from None
                example, claimed = _parse_record(record, lineno, where, keys, markers, strip_calculator)
                if example.id in seen:
                    raise KPODInputError(
                        f"{where}: field 'id': expected a unique id, got {example.id!r} again (first on line {seen[example.id]})"
                    )
            except KPODInputError as exc:
                if on_error == "raise":
                    raise
                result.skipped.append((lineno, str(exc)))
                continue
            seen[example.id] = lineno
            if filter_wrong_answers and not answers_match(claimed, example.answer):
                result.filtered.append(example.id)
                continue
            result.append(example)
    return result


def write_jsonl(examples: Iterable[CoTExample], path: str | os.PathLike) -> None:
    """Write examples in the format ``read_jsonl`` reads (via a temporary file: never half-written)."""
    file = Path(path)
    tmp = file.with_name(file.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        for ex in examples:
            if not isinstance(ex, CoTExample):
                tmp.unlink()
                raise bad_input("examples", "CoTExample items", type(ex).__name__)
            handle.write(json.dumps(ex.to_dict(), ensure_ascii=False) + "\n")
    os.replace(tmp, file)
