"""Exceptions shared by every kpod_ops component."""

from __future__ import annotations


class KPODInputError(ValueError):
    """Bad input: the message names the argument, what was expected and what came."""


def bad_input(argument: str, expected: str, got: object) -> KPODInputError:
    """Build the uniform error message ``argument: expected X, got Y``."""
    return KPODInputError(f"{argument}: expected {expected}, got {got}")
