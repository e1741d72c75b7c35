"""Built-in datasets that need no network: ``load_builtin(name, split, n, seed, **arith_options)``."""

from __future__ import annotations

import random
from importlib import resources
from typing import Any, Literal, overload

from ..errors import bad_input
from .arith import load_arith_cot, load_arith_text
from .example import CoTExample
from .gsm_symbolic import load_gsm_symbolic
from .jsonl import read_jsonl
from .splits import check_count, check_split

BUILTIN_NAMES = ("gsm-symbolic", "arith-cot", "arith-text", "gsm8k-fixture")
FIXTURE_FILE = "gsm8k_fixture.jsonl"


def _fixture_path() -> str:
    """Path of the hand-written GSM8K-format fixture (raw GSM8K fields: question, answer with ``#### n``)."""
    return str(resources.files("kpod_ops.data") / "files" / FIXTURE_FILE)


def load_gsm8k_fixture(split: str = "train", n: int | None = None, seed: int = 0) -> list[CoTExample]:
    """The fixture's items (every fourth is test), calculator annotations stripped, shuffled by ``seed``."""
    check_split(split)
    items = read_jsonl(_fixture_path(), fields={"rationale": "answer", "answer": None}, strip_calculator=True)
    chosen = [ex for i, ex in enumerate(items) if (i % 4 == 3) == (split == "test")]
    random.Random(seed).shuffle(chosen)
    if n is not None:
        check_count(n)
        if n > len(chosen):
            raise bad_input("n", f"at most {len(chosen)} for gsm8k-fixture split {split!r}", n)
        chosen = chosen[:n]
    return chosen


@overload
def load_builtin(name: Literal["arith-text"], split: str = ..., n: int | None = ..., seed: int = ...) -> list[str]: ...
@overload
def load_builtin(name: str, split: str = ..., n: int | None = ..., seed: int = ..., *, max_steps: int = ...,
                 max_distractors: int = ..., wording: str = ...) -> list[CoTExample]: ...


def load_builtin(name: str, split: str = "train", n: int | None = None, seed: int = 0,
                 **arith_options: Any) -> list[CoTExample] | list[str]:
    """Load a built-in dataset, deterministic by ``seed``, with disjoint train/test splits.

    - ``"gsm-symbolic"``: GSM8K-style questions/rationales from reasoning-gym (default n 1000);
    - ``"arith-cot"``: procedural multi-step arithmetic word problems (default n 1000); its variants
      through ``max_steps`` (2..5, default 5), ``max_distractors`` (0..3, default 2) and ``wording``
      (``"plain"``, or ``"varied"``: each operation set at a place and time that the rationale
      restates, so keypoints are a minority of the rationale's tokens);
    - ``"arith-text"``: ``list[str]`` of plain warm-up texts from a pool disjoint from arith-cot's
      splits (``split`` is ignored; default n 1000);
    - ``"gsm8k-fixture"``: the small hand-written GSM8K-format fixture (all items by default).
    """
    if arith_options and name != "arith-cot":
        raise bad_input(", ".join(sorted(arith_options)), "options of 'arith-cot' only (max_steps, max_distractors, wording)",
                        f"name {name!r}")
    if name == "gsm8k-fixture":
        return load_gsm8k_fixture(split, n, seed)
    count = 1000 if n is None else n
    if name == "arith-cot":
        unknown = sorted(set(arith_options) - {"max_steps", "max_distractors", "wording"})
        if unknown:
            raise bad_input(", ".join(unknown), "arith-cot's options max_steps, max_distractors, wording", "unknown option")
        return load_arith_cot(split, count, seed, **arith_options)
    if name == "arith-text":
        return load_arith_text(count, seed)
    if name == "gsm-symbolic":
        return load_gsm_symbolic(split, count, seed)
    raise bad_input("name", f"one of {BUILTIN_NAMES}", repr(name))
