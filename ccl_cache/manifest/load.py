"""Reading a listing: guess its format (:func:`detect_format`), read the format's options written
after its name (:func:`parse_format`), check the reader's options, run the reader and build the
:class:`Manifest` (:func:`load_manifest`)."""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any, Callable

from ccl_cache.errors import ConfigError, ManifestError
from ccl_cache.manifest.formats import READERS
from ccl_cache.manifest.formats.braces import has_braces
from ccl_cache.manifest.parse import _Context, _csv_rows, _Item, _Parsed, _Problems, _read_lines
from ccl_cache.manifest.records import ClipRecord, Manifest


def detect_format(path: str | Path) -> str:
    """Guess the listing format of ``path`` (see the module docstring for the formats)."""
    path = Path(path)
    if _names_shards(path):
        return "webdataset"
    if path.is_dir():
        if (path / "classInd.txt").is_file():
            return "ucf101"
        listings = sorted(p.name for p in path.iterdir() if p.suffix.lower() in (".csv", ".json") and p.is_file())
        if listings:
            # A dataset folder with its own listing (ccl-cache synth writes manifest.csv): read as
            # class subfolders, it became one class named after its videos/ folder.
            raise ManifestError(f"{path} is a folder that holds a listing ({', '.join(listings)}); pass the "
                                f"listing itself (e.g. {path / listings[0]}), or --format folder to read "
                                "its subfolders as classes")
        return "folder"
    suffix = path.suffix.lower()
    if suffix == ".json":
        return "activitynet"
    if suffix == ".txt":
        return "ucf101"
    first = _first_csv_row(path)
    if {"id", "path", "label"} <= {cell.lower() for cell in first}:
        return "csv"
    if len(first) == 4 and _is_number(first[1]):
        return "vggsound"
    raise ManifestError(f"{path}: cannot tell the manifest format from its first row {first}; pass "
                        f"--format (format=; one of: {', '.join(READERS.names())}) or add a header line "
                        "id,path,label")


def _names_shards(path: Path) -> bool:
    """True when ``path`` is a tar shard, a shard pattern, a folder of shards or a list of shards."""
    from ccl_cache.media.tarshard import is_tar_name  # the media room loads PyAV: only when detecting

    def shard_entry(text: str) -> bool:
        return is_tar_name(text) or (has_braces(text) and ".tar" in text.lower())

    if not path.exists():
        return has_braces(str(path))
    if path.is_dir():
        return any(is_tar_name(p) and p.is_file() for p in path.iterdir())
    if shard_entry(path.name):
        return True
    if path.suffix.lower() in (".csv", ".json") or not path.is_file():
        return False
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096).decode("utf-8", "replace")
    except OSError:
        return False
    entries = [line.strip() for line in head.splitlines() if line.strip() and not line.startswith("#")]
    return bool(entries) and shard_entry(entries[0])


def _first_csv_row(path: Path) -> list[str]:
    problems = _Problems(skip_bad=True)  # detection only looks; reading reports bad bytes properly
    for _, row in _csv_rows(_read_lines(path, problems)):
        return row
    raise ManifestError(f"{path}: the manifest is empty; expected rows of clips")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def parse_format(text: str) -> tuple[str, dict[str, Any]]:
    """``"name[:key=value,...]"`` → (format name, its reader options with typed values).

    The form ``--format`` takes on the command line, e.g. ``"webdataset:label_key=caption,split=test"``.
    Values become the type of the option's default (int, float, bool: true/false); list-valued
    options (``classes``) are given in Python. ConfigError for an unknown format or option.
    """
    name, colon, rest = text.partition(":")
    name = name.strip().lower()
    if name != "auto":
        READERS.get(name)  # ConfigError naming the formats
    elif colon:
        raise ConfigError(f"format {text!r}: options need the format's name, e.g. webdataset:label_key=caption")
    options: dict[str, Any] = {}
    for part in filter(str.strip, rest.split(",")):
        key, equals, value = (x.strip() for x in part.partition("="))
        if not equals or not key:
            raise ConfigError(f"format {text!r}: {part.strip()!r} is not KEY=VALUE; write e.g. "
                              f"{name}:OPTION=VALUE,OPTION=VALUE")
        if key in options:
            raise ConfigError(f"format {text!r}: option {key} is given twice; keep one")
        options[key] = value
    if options:
        reader = READERS.get(name)
        _reader_options(name, reader, options)
        options = {key: _typed(name, reader, key, value) for key, value in options.items()}
    return name, options


def _typed(name: str, reader: Callable[..., _Parsed], key: str, value: str) -> Any:
    param = inspect.signature(reader).parameters[key]
    default = param.default
    if "Sequence" in str(param.annotation):
        raise ConfigError(f"option {key} of manifest format {name!r} is a list; give it in Python "
                          f"(load_manifest(..., {key}=[...]))")
    try:
        if isinstance(default, bool):
            words = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
            return words[value.lower()]
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
    except (KeyError, ValueError):
        kind = "true or false" if isinstance(default, bool) else type(default).__name__
        raise ConfigError(f"option {key}={value!r} of manifest format {name!r}: expected {kind}") from None
    return value


def _reader_options(name: str, reader: Callable[..., _Parsed], options: dict[str, Any]) -> None:
    accepted = [p for p in inspect.signature(reader).parameters if p != "ctx"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(f"unknown option(s) {', '.join(unknown)} for manifest format {name!r}; "
                          f"it accepts: {', '.join(accepted) or '(none)'}")


def _unique_ids(items: list[_Item], problems: _Problems) -> list[ClipRecord]:
    first: dict[str, str] = {}
    records: list[ClipRecord] = []
    for where, rec in items:
        if rec.id in first:
            problems.bad(where, f"duplicate id {rec.id!r} (first at {first[rec.id]})", "give every clip a unique id")
            continue
        first[rec.id] = where
        records.append(rec)
    return records


def load_manifest(
    path: str | Path, format: str = "auto", root: str | Path | None = None, skip_bad: bool = False,
    check_files: bool = True, **fmt_opts: Any,
) -> Manifest:
    """Read a clip listing into a :class:`Manifest`.

    ``format`` is ``"auto"`` (guessed by :func:`detect_format`) or a name in :data:`READERS`;
    ``root`` is where relative video paths start (each format documents its default);
    ``skip_bad`` leaves bad rows out (listed in ``Manifest.skipped``) instead of raising;
    ``check_files`` requires every video file to exist; ``fmt_opts`` are the reader's options
    (for example ``split_id=1, classes=[...]`` for UCF101 or ``pattern=...`` for VGGSound), also
    accepted after the format's name (``format="webdataset:label_key=caption"``, see
    :func:`parse_format`). Class ids are the index in the sorted class list: the given
    ``classes`` when the format takes them, else the labels found.
    """
    name, spec_opts = parse_format(format)
    twice = sorted(set(spec_opts) & set(fmt_opts))
    if twice:
        raise ConfigError(f"option(s) {', '.join(twice)} given both in format={format!r} and as arguments; give each once")
    fmt_opts = {**spec_opts, **fmt_opts}
    path = Path(os.path.abspath(path))
    if not path.exists() and not (name in ("auto", "webdataset") and has_braces(str(path))):
        raise ManifestError(f"{path}: manifest not found; check the path")
    name = detect_format(path) if name == "auto" else name
    reader = READERS.get(name)
    _reader_options(name, reader, fmt_opts)
    problems = _Problems(skip_bad)
    ctx = _Context(path, Path(os.path.abspath(root)) if root is not None else None, check_files, problems)
    items, classes = reader(ctx, **fmt_opts)
    records = _unique_ids(items, problems)
    if not records:
        left = f" ({len(problems.items)} row(s) skipped as bad: first {problems.items[0]})" if problems.items else ""
        raise ManifestError(f"{path}: no clips in the manifest{left}; check the file, the format and root")
    return Manifest.from_records(records, classes, problems.items)
