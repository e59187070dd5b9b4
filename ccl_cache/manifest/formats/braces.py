"""Brace expansion of shard patterns (``data/{00000..00009}.tar``), as WebDataset expands its URLs.

The rules of the ``braceexpand`` package, without depending on it: ``{a,b,c}`` gives each
alternative, ``{00..12}`` / ``{0..12..3}`` a numeric range (zero-padded to the wider end when
either end is written with a leading zero; descending ranges count down), ``{a..e}`` a letter
range; groups nest and several groups multiply, left to right. A brace pair with neither a
comma nor a range stays literal (``{x}``); ``\\{`` and ``\\}`` are literal braces.
"""

from __future__ import annotations

import re

MAX_EXPANSION = 1_000_000  # more names than any real shard list; a typo such as {0..99999999} stops here

_NUMBERS = re.compile(r"^(-?\d+)\.\.(-?\d+)(?:\.\.(-?\d+))?$")
_LETTERS = re.compile(r"^([A-Za-z])\.\.([A-Za-z])(?:\.\.(-?\d+))?$")


def expand_braces(pattern: str) -> list[str]:
    """Every name ``pattern`` stands for, in order. ValueError for unbalanced braces or ranges
    that expand to more than :data:`MAX_EXPANSION` names."""
    return [_unescape(name) for name in _expand(pattern)]


def has_braces(text: str) -> bool:
    """True when ``text`` holds an unescaped brace group that expands."""
    try:
        return _group(text) is not None
    except ValueError:
        return True  # unbalanced: a pattern the user meant, reported when expanded


def _unescape(text: str) -> str:
    return text.replace("\\{", "{").replace("\\}", "}")


def _expand(text: str) -> list[str]:
    found = _group(text)
    if found is None:
        return [text]
    start, end = found
    prefix, inner, rest = text[:start], text[start + 1:end], text[end + 1:]
    alternatives = _split_commas(inner)
    if len(alternatives) > 1:
        heads = [h for alt in alternatives for h in _expand(alt)]
    else:
        heads = _range(inner)
        if heads is None:  # no comma, no range: the braces are literal characters
            heads = ["\\{" + h + "\\}" for h in _expand(inner)]
    tails = _expand(rest)
    if len(heads) * len(tails) > MAX_EXPANSION:
        raise ValueError(f"{text!r} expands to more than {MAX_EXPANSION} names; check the ranges")
    return [prefix + h + t for h in heads for t in tails]


def _group(text: str) -> tuple[int, int] | None:
    """(index of the first unescaped "{", index of its matching "}"), or None when there is none."""
    depth, start = 0, -1
    i = 0
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2
            continue
        if char == "{":
            if depth == 0:
                start = i
            depth += 1
        elif char == "}":
            if depth == 0:
                raise ValueError(f"{text!r}: '}}' at position {i} closes no '{{'; balance the braces")
            depth -= 1
            if depth == 0:
                return start, i
        i += 1
    if depth:
        raise ValueError(f"{text!r}: '{{' at position {start} is never closed; balance the braces")
    return None


def _split_commas(inner: str) -> list[str]:
    """``inner`` split at its top-level unescaped commas."""
    parts, depth, last, i = [], 0, 0, 0
    while i < len(inner):
        char = inner[i]
        if char == "\\":
            i += 2
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(inner[last:i])
            last = i + 1
        i += 1
    parts.append(inner[last:])
    return parts


def _range(inner: str) -> list[str] | None:
    numbers = _NUMBERS.match(inner)
    if numbers:
        first, last = int(numbers.group(1)), int(numbers.group(2))
        step = _step(numbers.group(3), first, last, inner)
        padded = any(_leading_zero(g) for g in numbers.group(1, 2))
        width = max(len(numbers.group(1)), len(numbers.group(2))) if padded else 0
        return [f"{v:0{width}d}" if width else str(v) for v in range(first, last + step // abs(step), step)]
    letters = _LETTERS.match(inner)
    if letters:
        first, last = ord(letters.group(1)), ord(letters.group(2))
        step = _step(letters.group(3), first, last, inner)
        return [chr(v) for v in range(first, last + step // abs(step), step)]
    return None


def _step(text: str | None, first: int, last: int, inner: str) -> int:
    size = abs(int(text)) if text else 1
    if size == 0:
        raise ValueError(f"{{{inner}}}: a range step of 0 never ends; give a positive step")
    count = abs(last - first) // size + 1
    if count > MAX_EXPANSION:
        raise ValueError(f"{{{inner}}} expands to {count} names (more than {MAX_EXPANSION}); check the range")
    return size if last >= first else -size


def _leading_zero(number: str) -> bool:
    digits = number.lstrip("-")
    return len(digits) > 1 and digits.startswith("0")
