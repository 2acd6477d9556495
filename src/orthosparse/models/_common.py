"""Small argument checks shared by the model constructors."""

from __future__ import annotations

from collections.abc import Sequence

from .._checks import check_positive_int

__all__ = ["check_bool", "check_choice", "check_input_size"]


def check_bool(value: object, name: str) -> bool:
    """Return ``value`` if it is a bool; raise ``TypeError`` otherwise (no truthy ints/strings)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__}: {value!r}")
    return value


def check_choice(value: object, name: str, choices: Sequence[str]) -> str:
    """Return ``value`` if it is one of ``choices``; raise ``ValueError`` listing them otherwise."""
    if value not in choices:
        raise ValueError(f"{name}={value!r} must be one of: {', '.join(map(repr, choices))}")
    return value  # type: ignore[return-value]


def check_input_size(input_size: object) -> tuple[int, int]:
    """Return ``input_size`` as ``(H, W)`` of positive ints; raise ``ValueError``/``TypeError``."""
    if isinstance(input_size, (str, bytes)) or not isinstance(input_size, Sequence) or \
            len(input_size) != 2:
        raise ValueError(f"input_size={input_size!r} must be a pair (H, W) of positive ints")
    return (check_positive_int(input_size[0], "input_size[0]"),
            check_positive_int(input_size[1], "input_size[1]"))
