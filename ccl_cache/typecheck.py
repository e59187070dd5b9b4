"""Scalar type checks for configuration values that arrive untyped (YAML, ``KEY=VALUE`` options).

A string where a number belongs must be a ConfigError naming the value, not a TypeError deep in a
comparison or a layer constructor.
"""

from __future__ import annotations

import numbers
import typing
from typing import Any

import numpy as np


def expected_type(value: Any, hint: Any) -> str | None:
    """The name of the type ``value`` should have, when it does not fit ``hint``; else None.

    Only scalar hints are checked: ``bool``, ``int``, ``float`` (an integer fits), ``str`` and
    ``X | None``; any other hint (containers, unions of several types) is accepted as is.
    """
    args = typing.get_args(hint)
    if args and type(None) in args:
        if value is None:
            return None
        rest = [a for a in args if a is not type(None)]
        if len(rest) != 1:
            return None
        hint = rest[0]
    if hint is bool:
        ok = isinstance(value, (bool, np.bool_))
    elif hint is int:  # numpy integers too
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    elif hint is str:
        ok = isinstance(value, str)
    else:
        return None
    return None if ok else hint.__name__
