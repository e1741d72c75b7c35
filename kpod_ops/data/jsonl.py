"""JSONL reading with field mapping and validation, and writing.

Bad input is caught here, with the file and line, never deep inside training.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from ..errors import KPODInputError, bad_input
from ..steps import DEFAULT_ANSWER_MARKERS, find_answer
from .answers import answers_match, extract_answer
from .example import CoTExample

FIELDS = ("id", "question", "rationale", "answer")
_CALCULATOR = re.compile(r"<<[^<>]*>>")


class Disagreement(NamedTuple):
    """A record whose rationale reaches another answer than its gold ``answer`` field."""

    id: str
    rationale_answer: str | None  # the rationale's own final answer (None: no number in it)
    gold: str


class ReadResult(list):
    """The examples read (a ``list[CoTExample]``) plus what was left out or needs a look.

    ``skipped`` lists ``(line_number, reason)`` for bad lines dropped under ``on_error="skip"``;
    ``disagreements`` lists every record whose rationale's own final answer differs from its gold
    answer (kept unless ``filter_wrong_answers``); ``filtered`` lists the ids that
    ``filter_wrong_answers`` dropped; ``ambiguous_markers`` lists the ids whose rationale holds an
    answer marker ("the answer is") that does not end it and was therefore kept as reasoning.
    """

    def __init__(self, examples: Iterable[CoTExample] = (), skipped=None, filtered=None, ambiguous_markers=None,
                 disagreements=None) -> None:
        super().__init__(examples)
        self.skipped: list[tuple[int, str]] = list(skipped or [])
        self.filtered: list[str] = list(filtered or [])
        self.ambiguous_markers: list[str] = list(ambiguous_markers or [])
        self.disagreements: list[Disagreement] = list(disagreements or [])

    def report(self) -> str:
        """One line: how many examples were read and what was left out or needs a look."""
        text = (f"{len(self)} examples read; {len(self.skipped)} bad lines skipped, {len(self.disagreements)} whose "
                f"rationale disagrees with the answer field ({len(self.filtered)} of them filtered), "
                f"{len(self.ambiguous_markers)} with an answer marker inside the reasoning")
        if self.disagreements:
            shown = ", ".join(f"{d.id!r} ({d.rationale_answer} vs {d.gold})" for d in self.disagreements[:3])
            text += f"; disagreeing (rationale vs answer): {shown}" + (" ..." if len(self.disagreements) > 3 else "")
        return text


def has_calculator_annotations(text: str) -> bool:
    """Whether ``text`` holds a GSM8K calculator annotation (``<<48/2=24>>``)."""
    return _CALCULATOR.search(text) is not None


def strip_calculator_annotations(text: str) -> str:
    """Remove GSM8K's ``<<48/2=24>>`` calculator annotations."""
    return _CALCULATOR.sub("", text)


def _label(key: str, name: str) -> str:
    """How an error names a field: the file's key, and our name for it where the two differ."""
    return f"field '{key}'" if key == name else f"field '{key}' ({name})"


def _field(record: Mapping, key: str, name: str, where: str, numbers: bool = False) -> str:
    """The record's ``key`` as a string; with ``numbers``, a JSON number too (``72`` reads as ``"72"``:
    ids and answers are often written as numbers)."""
    label = _label(key, name)
    what = "a string or a number" if numbers else "a string"
    if key not in record:
        raise KPODInputError(
            f"{where}: {label}: expected {what}, got nothing (missing; the record's keys are {sorted(record)[:12]}). "
            "Records need question and rationale (answer and id optional), or GSM8K's layout (question, and answer "
            "holding the rationale and '#### 72'); read_jsonl(fields=...) maps other keys"
        )
    value = record[key]
    if numbers and isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            raise KPODInputError(f"{where}: {label}: expected {what}, got {value!r}")
        return str(value)
    if not isinstance(value, str):
        raise KPODInputError(f"{where}: {label}: expected {what}, got {type(value).__name__} {value!r:.60}")
    return value


def generated_id(question: str, rationale: str) -> str:
    """The id of a record that has none: ``ex-`` and 12 hex digits of the SHA-1 of its question and
    rationale as written in the file. It does not depend on the line, so it survives reordering,
    inserted lines and re-runs; two rationales for one question get two ids."""
    digest = hashlib.sha1(f"{question}\n\x00{rationale}".encode()).hexdigest()
    return f"ex-{digest[:12]}"


def _gsm8k_layout(record: dict, keys: Mapping[str, str | None], markers) -> bool:
    """Whether ``record`` is GSM8K's own layout read with the default keys: no ``rationale``, and an
    ``answer`` that holds the rationale and ends with an answer marker (``... #### 72``)."""
    if keys["rationale"] != "rationale" or keys["answer"] != "answer" or "rationale" in record:
        return False
    answer = record.get("answer")
    return isinstance(answer, str) and find_answer(answer, markers).answer is not None


def _parse_record(record: object, where: str, keys: Mapping[str, str | None], markers, strip_calc: bool):
    if not isinstance(record, dict):
        hint = " (a JSON array or pretty-printed JSON: write one object per line)" if isinstance(record, list) else ""
        raise KPODInputError(f"{where}: expected a JSON object, got {type(record).__name__}{hint}")
    if _gsm8k_layout(record, keys, markers):  # the rationale and '#### 72' in `answer`: the answer after the marker
        keys = {**keys, "rationale": "answer", "answer": None}
    question = _field(record, keys["question"], "question", where)
    written = _field(record, keys["rationale"], "rationale", where)
    if keys["id"] is None or keys["id"] not in record:
        ex_id = generated_id(question, written)
    else:
        ex_id = _field(record, keys["id"], "id", where, numbers=True)
    raw = strip_calculator_annotations(written) if strip_calc else written
    # Windows line ends inside the strings (the id above is made from the text as written): a "\r" is no step
    # boundary and, with a word-level tokenizer, an unknown token
    question, raw = question.replace("\r\n", "\n"), raw.replace("\r\n", "\n")
    rationale, answer_part, ambiguous = find_answer(raw, markers)
    # the rationale's own final answer: after its final marker, else its last number
    claimed = extract_answer(answer_part) if answer_part is not None else extract_answer(rationale, markers=())
    if keys["answer"] in (None, keys["rationale"]) or keys["answer"] not in record:
        # no answer field (GSM8K style): the number after the marker that ends the rationale ("#### 72")
        answer = extract_answer(answer_part) if answer_part is not None else None
        if answer is None:
            field = "" if keys["answer"] is None else f"{_label(keys['answer'], 'answer')} missing and "
            raise KPODInputError(
                f"{where}: {field}{_label(keys['rationale'], 'rationale')}: expected an answer marker {list(markers)} "
                f"followed by a number at its end, got none"
            )
    else:
        answer = _field(record, keys["answer"], "answer", where, numbers=True)
    for name, value in (("id", ex_id), ("question", question), ("rationale", rationale), ("answer", answer)):
        if not value.strip():
            key = keys[name] if keys[name] is not None else name
            raise KPODInputError(f"{where}: {_label(key, name)}: expected a non-empty string, got {value!r}")
    metadata = record.get("metadata") if isinstance(record.get("metadata"), dict) else {}
    return CoTExample(ex_id, question, rationale, answer.strip(), dict(metadata)), claimed, ambiguous


def decode_line(raw: bytes, lineno: int, where: str) -> str:
    """One line as text: UTF-8 (a byte-order mark allowed at the start of the file)."""
    try:
        return raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
    except UnicodeDecodeError as exc:
        bad = raw[exc.start : exc.start + 1].hex()
        raise KPODInputError(f"{where}: expected UTF-8 text, got byte 0x{bad} at byte {exc.start + 1} of the line") from None


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
    ``{"question": "input", "rationale": "output"}``; a key it names must be in some record. Raw GSM8K
    (a record without ``rationale`` whose ``answer`` ends with an answer marker, ``... #### 72``) needs
    none: its rationale is read from ``answer``, as ``{"rationale": "answer"}`` would. ``id`` and ``answer`` are optional in every record:
    without an id (or with ``fields={"id": None}``) it is :func:`generated_id` of the question and
    rationale; without an answer (or with ``fields={"answer": None}``) it is the number after the
    answer marker that ends the rationale (``#### 72``, "So the answer is 72."), as
    :func:`extract_answer` reads answers everywhere. An answer marker that ends the rationale is
    split off it; one elsewhere is reasoning (listed in ``result.ambiguous_markers``).

    An id or an answer may be written as a JSON number (``"answer": 72`` reads as ``"72"``).
    Bad UTF-8 (a byte-order mark is fine), bad JSON, a missing or non-string field, an empty
    rationale or a duplicate id raise ``KPODInputError`` naming the file and line, or with
    ``on_error="skip"`` are skipped and listed in ``result.skipped``. Records whose rationale's own
    final answer differs from the answer field are listed in ``result.disagreements`` and kept, or
    dropped with ``filter_wrong_answers`` (``result.filtered``).
    """
    if on_error not in ("raise", "skip"):
        raise bad_input("on_error", "'raise' or 'skip'", repr(on_error))
    if fields is not None and not isinstance(fields, Mapping):
        raise bad_input("fields", "a dict mapping id/question/rationale/answer to the file's keys", type(fields).__name__)
    if isinstance(markers, str) or not isinstance(markers, Sequence) or not all(isinstance(m, str) and m for m in markers):
        raise bad_input("markers", "a sequence of non-empty strings", repr(markers)[:60])
    keys: dict[str, str | None] = {name: name for name in FIELDS}
    for name, key in (fields or {}).items():
        if name not in FIELDS:
            raise bad_input("fields", f"keys among {FIELDS}", repr(name))
        if key is None and name in ("question", "rationale"):
            raise bad_input(f"fields[{name!r}]", "a JSON key", "None")
        keys[name] = key
    if not isinstance(path, (str, os.PathLike)):
        raise bad_input("path", "a str or os.PathLike path to a JSONL file", type(path).__name__)
    file = Path(path)
    if not file.is_file():
        raise bad_input("path", "an existing JSONL file", str(file))
    result = ReadResult()
    seen: dict[str, int] = {}
    named = {key for name, key in (fields or {}).items() if key is not None and key != name}  # renamed keys
    found: set[str] = set()
    with file.open("rb") as handle:
        if handle.read(2) == b"\x1f\x8b":
            raise KPODInputError(f"{file}: expected JSONL text, got a gzip file (decompress it first: gunzip {file.name})")
        handle.seek(0)
        for lineno, raw in enumerate(handle, start=1):
            where = f"{file}:{lineno}"
            try:
                line = decode_line(raw, lineno, where)
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    multi = " (JSONL holds one whole object per line; a pretty-printed file spans lines)" \
                        if line.strip() in ("[", "{") else ""
                    raise KPODInputError(
                        f"{where}: expected a JSON object, got invalid JSON ({exc.msg} at column {exc.colno}){multi}"
                    ) from None
                if isinstance(record, dict):
                    found.update(named.intersection(record))
                example, claimed, ambiguous = _parse_record(record, where, keys, markers, strip_calculator)
                if example.id in seen:
                    generated = keys["id"] is None or keys["id"] not in record
                    why = " (generated from the question and rationale: the same record twice)" if generated else ""
                    raise KPODInputError(
                        f"{where}: field 'id': expected a unique id, got {example.id!r} again (first on line {seen[example.id]}){why}"
                    )
            except KPODInputError as exc:
                if on_error == "raise":
                    raise
                result.skipped.append((lineno, str(exc)))
                continue
            seen[example.id] = lineno
            if ambiguous:
                result.ambiguous_markers.append(example.id)
            if not answers_match(claimed, example.answer):
                result.disagreements.append(Disagreement(example.id, claimed, example.answer))
                if filter_wrong_answers:
                    result.filtered.append(example.id)
                    continue
            result.append(example)
    missing = sorted(named - found)
    if missing and (result or result.skipped):
        raise bad_input("fields", f"keys that the records of {file} have", f"{missing}, in no record")
    return result


def write_jsonl(examples: Iterable[CoTExample], path: str | os.PathLike) -> None:
    """Write examples in the format ``read_jsonl`` reads (via a temporary file: never half-written)."""
    if isinstance(examples, CoTExample):
        raise bad_input("examples", "a list of CoTExample", "a single CoTExample (wrap it in a list: [example])")
    if not isinstance(path, (str, os.PathLike)):
        raise bad_input("path", "a str or os.PathLike path", type(path).__name__)
    file = Path(path)
    tmp = file.with_name(file.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        for ex in examples:
            if not isinstance(ex, CoTExample):
                tmp.unlink()
                raise bad_input("examples", "CoTExample items", type(ex).__name__)
            handle.write(json.dumps(ex.to_dict(), ensure_ascii=False) + "\n")
    os.replace(tmp, file)
