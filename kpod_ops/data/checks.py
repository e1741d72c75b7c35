"""Argument checks shared by the public entry points that take lists of examples."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from ..errors import bad_input

T = TypeVar("T")


def example_list(value: object, argument: str, item_type: type[T], *, allow_empty: bool = False) -> list[T]:
    """``value`` as a list of ``item_type``: a single item, an empty list or a wrong item is refused.

    A lone example where a list is expected is the usual slip (``tokenize_examples(ex, tok)``), so the
    message says to wrap it in a list.
    """
    name = item_type.__name__
    if isinstance(value, item_type):
        raise bad_input(argument, f"a list of {name}", f"a single {name} (wrap it in a list: [example])")
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise bad_input(argument, f"a list of {name}", type(value).__name__)
    items = list(value)
    if not items and not allow_empty:
        raise bad_input(argument, f"a non-empty list of {name}", "an empty list")
    for i, item in enumerate(items):
        if not isinstance(item, item_type):
            raise bad_input(f"{argument}[{i}]", f"a {name}", type(item).__name__)
    return items
