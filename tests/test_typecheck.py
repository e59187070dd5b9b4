"""ccl_cache.typecheck: which untyped config values fit a scalar type hint."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from ccl_cache.typecheck import expected_type


@pytest.mark.parametrize(("value", "hint", "wanted"), [
    (3, int, None), (np.int64(3), int, None), (True, int, "int"), ("3", int, "int"), (3.0, int, "int"),
    (3, float, None), (np.float32(0.5), float, None), ("abc", float, "float"), (False, float, "float"),
    (True, bool, None), (np.bool_(False), bool, None), (1, bool, "bool"),
    ("x", str, None), (1, str, "str"),
    (None, int | None, None), ("x", int | None, "int"), (None, int, "int"),
    ({"a": 1}, dict, None), ((1, 2), tuple[int, ...], None), ("x", int | str, None),  # not scalar: not checked
])
def test_expected_type(value: Any, hint: Any, wanted: str | None) -> None:
    assert expected_type(value, hint) == wanted
