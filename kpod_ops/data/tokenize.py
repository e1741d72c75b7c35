"""Turn ``CoTExample``s into ``TokenizedExample``s: prompt, rationale steps and answer as token ids.

One rule per architecture (docs/method.md, R16–R17):

- decoder-only: the ids are those of the **full training text** (no boundary artefacts); each
  token goes to the segment (prompt, step k, answer) that holds its first character, read from the
  fast tokenizer's offsets;
- encoder–decoder: the prompt, every step and the answer are tokenised **on their own** and
  concatenated, so a step has the same tokens on whichever side of the encoder/decoder split it lands.

Either way the answer ends with the tokenizer's EOS (so generation stops), and a step that ends up
with no token of its own (its characters inside a token that starts earlier) is merged into the
step before it, so spans are never empty and ``"".join(steps) == rationale`` still holds.
"""

from __future__ import annotations

import string
import warnings
from collections.abc import Sequence
from typing import Any

from ..errors import KPODInputError, bad_input
from ..steps import RULES, assign_tokens, resolve_rule, split_steps
from .checks import example_list
from .example import CoTExample
from .tokenized import TokenizedExample

ARCHITECTURES = ("decoder", "encoder-decoder")
DEFAULT_TEMPLATE = "Q: {question}\nA: Let's think step by step.\n"
DEFAULT_ANSWER_TEMPLATE = "{sep}Therefore, the answer is {answer}."
CHAT = "chat"
CHAT_USER_TEMPLATE = "{question}\nLet's think step by step."


def _check_tokenizer(tokenizer: Any, architecture: str) -> int:
    if architecture not in ARCHITECTURES:
        raise bad_input("architecture", f"one of {ARCHITECTURES}", repr(architecture))
    if not callable(tokenizer):
        raise bad_input("tokenizer", "a Hugging Face tokenizer", type(tokenizer).__name__)
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise bad_input("tokenizer", "a tokenizer with an EOS token (eos_token_id)", "eos_token_id=None")
    if architecture == "decoder" and not getattr(tokenizer, "is_fast", False):
        raise bad_input("tokenizer", "a fast tokenizer (offset mapping) for architecture='decoder'", type(tokenizer).__name__)
    return int(eos)


def _default_bos(tokenizer: Any) -> int | None:
    """The BOS id when the tokenizer prepends one by default (Llama-style), else None."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return None
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return int(bos) if ids and ids[0] == bos else None


def _render(example: CoTExample, tokenizer: Any, template: str, answer_template: str, step_rule: str):
    """(prompt text, step strings, answer text)."""
    if not isinstance(example, CoTExample):
        raise bad_input("example", "a CoTExample", type(example).__name__)
    if template == CHAT:
        if getattr(tokenizer, "chat_template", None) is None:
            raise bad_input("template", "'chat' only with a tokenizer that has a chat template", "chat_template=None")
        messages = [{"role": "user", "content": CHAT_USER_TEMPLATE.format(question=example.question)}]
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
        prompt = template.format(question=example.question)
    steps = split_steps(example.rationale, step_rule)
    sep = "\n" if resolve_rule(example.rationale, step_rule) in ("newline", "paragraph") else " "
    answer = answer_template.format(answer=example.answer, sep=sep)
    if not answer:
        raise bad_input("answer_template", "a template that renders to non-empty text", repr(answer_template))
    return prompt, steps, answer


def _template_fields(template: str, argument: str, allowed: tuple[str, ...], required: str) -> None:
    """A format string whose fields are among ``allowed`` and include ``required``."""
    expected = f"a format string with the field {{{required}}} and no field other than {', '.join('{' + a + '}' for a in allowed)}"
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:
        raise bad_input(argument, expected, f"{template!r} ({exc})") from None
    unknown = sorted(f for f in fields if f not in allowed)
    if unknown or required not in fields:
        got = f"{template!r} (unknown field {{{unknown[0]}}})" if unknown else repr(template)
        raise bad_input(argument, expected, got)


def _check_templates(template: str, answer_template: str) -> None:
    if not isinstance(template, str):
        raise bad_input("template", "'chat' or a format string containing '{question}'", repr(template))
    if template != CHAT:
        _template_fields(template, "template", ("question",), "question")
    if not isinstance(answer_template, str):
        raise bad_input("answer_template", "a format string containing '{answer}'", repr(answer_template))
    _template_fields(answer_template, "answer_template", ("answer", "sep"), "answer")


class TokenizedList(list):
    """The ``TokenizedExample``s (a plain list) plus ``skipped``: ``(id, length)`` of each example
    left out by ``on_too_long="skip"``."""

    def __init__(self, examples=(), skipped=None) -> None:
        super().__init__(examples)
        self.skipped: list[tuple[str, int]] = list(skipped or [])


def _merge_empty(steps: list[str], counts: list[int], ex_id: str) -> tuple[list[str], list[int]]:
    """Merge steps without tokens into the previous step (the first into the next)."""
    merged: list[str] = []
    merged_counts: list[int] = []
    pending = ""
    for text, count in zip(steps, counts):
        if count == 0:
            if merged:
                merged[-1] += text
            else:
                pending += text
            continue
        merged.append(pending + text)
        merged_counts.append(count)
        pending = ""
    if not merged:
        raise KPODInputError(f"example {ex_id!r}: rationale: expected at least one token of its own, got none")
    if pending:
        merged[-1] += pending
    return merged, merged_counts


def _build(
    ex_id: str, prefix: list[int], ids: list[int], segments: list[int], steps: list[str], eos: int, architecture: str
) -> TokenizedExample:
    """Assemble from token ids and their segment (0 prompt, 1..n steps, n+1 answer)."""
    n = len(steps)
    counts = [0] * (n + 2)
    for seg in segments:
        counts[seg] += 1
    steps, step_counts = _merge_empty(steps, counts[1 : n + 1], ex_id)
    input_ids = tuple(prefix) + tuple(ids) + (eos,)
    prompt_len = len(prefix) + counts[0]
    spans = []
    pos = prompt_len
    for c in step_counts:
        spans.append((pos, pos + c))
        pos += c
    return TokenizedExample(ex_id, tuple(int(i) for i in input_ids), prompt_len, tuple(spans), pos, architecture, tuple(steps))


def tokenize_examples(
    examples: Sequence[CoTExample],
    tokenizer: Any,
    *,
    architecture: str = "decoder",
    template: str = DEFAULT_TEMPLATE,
    answer_template: str = DEFAULT_ANSWER_TEMPLATE,
    step_rule: str = "auto",
    add_bos: bool | None = None,
    max_length: int | None = None,
    on_too_long: str = "error",
) -> list[TokenizedExample]:
    """Tokenise many examples in batched tokenizer calls (see ``tokenize_example``).

    ``max_length``: sequences longer than this raise (``on_too_long="error"``) or are left out
    (``"skip"``, with a warning naming them and ``result.skipped`` listing ``(id, length)``), so no
    training step meets an over-long sequence. Returns a list (a :class:`TokenizedList`).
    """
    examples = example_list(examples, "examples", CoTExample)
    eos = _check_tokenizer(tokenizer, architecture)
    _check_templates(template, answer_template)
    if step_rule not in RULES:
        raise bad_input("step_rule", f"one of {RULES}", repr(step_rule))
    if add_bos is not None and not isinstance(add_bos, bool):
        raise bad_input("add_bos", "True, False or None", repr(add_bos))
    if on_too_long not in ("error", "skip"):
        raise bad_input("on_too_long", "'error' or 'skip'", repr(on_too_long))
    if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2):
        raise bad_input("max_length", "an int >= 2 or None", repr(max_length))
    rendered = [_render(ex, tokenizer, template, answer_template, step_rule) for ex in examples]
    if add_bos is None:
        bos = None if template == CHAT else _default_bos(tokenizer)
    else:
        bos = getattr(tokenizer, "bos_token_id", None) if add_bos else None
        if add_bos and bos is None:
            raise bad_input("add_bos", "False or a tokenizer with a BOS token", "bos_token_id=None")
    prefix = [] if bos is None else [int(bos)]
    out: list[TokenizedExample] = []
    if architecture == "decoder":
        texts = [p + "".join(s) + a for p, s, a in rendered]
        enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        for ex, (prompt, steps, _answer), ids, offsets in zip(examples, rendered, enc["input_ids"], enc["offset_mapping"]):
            starts = [0, len(prompt)]
            for s in steps:
                starts.append(starts[-1] + len(s))
            segments = assign_tokens(offsets, starts, claim_straddling=1)  # a word begun in the prompt's last space
            out.append(_build(ex.id, prefix, list(ids), segments, steps, eos, architecture))
    else:
        pieces = [piece for p, s, a in rendered for piece in (p, *s, a)]
        enc = tokenizer(pieces, add_special_tokens=False)["input_ids"]
        at = 0
        for ex, (_prompt, steps, _answer) in zip(examples, rendered):
            ids: list[int] = []
            segments: list[int] = []
            for seg in range(len(steps) + 2):
                ids.extend(enc[at])
                segments.extend([seg] * len(enc[at]))
                at += 1
            out.append(_build(ex.id, prefix, ids, segments, steps, eos, architecture))
    if max_length is None:
        return TokenizedList(out)
    kept, skipped = [], []
    for te in out:
        if len(te.input_ids) <= max_length:
            kept.append(te)
        elif on_too_long == "error":
            raise KPODInputError(
                f"example {te.id!r}: sequence length: expected at most max_length={max_length} tokens, got {len(te.input_ids)}"
            )
        else:
            skipped.append((te.id, len(te.input_ids)))
    if skipped:
        shown = ", ".join(f"{i!r} ({n} tokens)" for i, n in skipped[:10])
        more = f" and {len(skipped) - 10} more" if len(skipped) > 10 else ""
        warnings.warn(f"tokenize_examples: left out {len(skipped)} of {len(out)} examples longer than "
                      f"max_length={max_length} tokens: {shown}{more}", UserWarning, stacklevel=2)
    return TokenizedList(kept, skipped)


def tokenize_example(
    example: CoTExample,
    tokenizer: Any,
    *,
    architecture: str = "decoder",
    template: str = DEFAULT_TEMPLATE,
    answer_template: str = DEFAULT_ANSWER_TEMPLATE,
    step_rule: str = "auto",
    add_bos: bool | None = None,
) -> TokenizedExample:
    """Token ids of prompt + rationale + answer (+ EOS) with the rationale's step spans.

    ``template`` formats the prompt (``{question}``), or is ``"chat"`` to use the tokenizer's chat
    template (the rationale is then the assistant's reply); ``answer_template`` formats the answer
    segment (``{answer}``, and ``{sep}``: a newline after line-style rationales, else a space).
    ``step_rule`` is ``split_steps``'s rule; ``add_bos`` None prepends BOS when the tokenizer
    does so by default (never with ``"chat"``).
    """
    return tokenize_examples(
        [example],
        tokenizer,
        architecture=architecture,
        template=template,
        answer_template=answer_template,
        step_rule=step_rule,
        add_bos=add_bos,
    )[0]
