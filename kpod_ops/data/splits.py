"""Deterministic, seed-independent split membership: a question's split is a hash of its text.

Because membership does not depend on the seed or on ``n``, train and test never share a question
whatever seeds and sizes are asked for.
"""

from __future__ import annotations

import hashlib

from ..errors import bad_input

SPLITS = ("train", "test")


def bucket(text: str, salt: str = "kpod") -> int:
    """A stable bucket in ``[0, 100)`` for ``text`` (blake2b, so it is the same on every machine)."""
    digest = hashlib.blake2b(f"{salt}\x00{text}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % 100


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise bad_input("split", f"one of {SPLITS}", repr(split))
    return split


def check_count(n: object, argument: str = "n") -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise bad_input(argument, "a positive int", repr(n))
    return n
