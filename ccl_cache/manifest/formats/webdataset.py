"""The ``webdataset`` format: tar shards in the WebDataset layout (what video2dataset writes), read
in place, one clip per sample.

**Input** (the manifest path): a ``.tar`` shard; a brace pattern such as
``data/{00000..00009}.tar`` (expanded like WebDataset's URLs, see :mod:`.braces`); a folder (its
``*.tar`` files, sorted by name); or a text file listing shards or patterns, one per line (blank
lines and ``#`` comments skipped; relative entries start at ``root``, default: the list's folder).
Rows follow the shards in that order and the samples in tar order, so the contiguous row blocks
of ``extract --shard I/N`` are (about) contiguous runs of shards.

**Samples** are grouped as WebDataset groups them: a member's key is its name up to the first dot
of its base name (``videos/abc.mp4`` → key ``videos/abc``, extension ``mp4``), and consecutive
members with one key form one sample. Each sample with a video member becomes a record with id =
the key and path = ``<shard>/<member>`` (decoded in place by :mod:`ccl_cache.media`), whole file.

**Labels and splits** come from each sample's ``.json``: video2dataset writes the input table's
columns there (``url``, ``caption``, the ``--save_additional_columns``) with ``key``,
``status`` and ``error_message``. Field ``label_key`` (default ``label``) is the class; field
``split_key`` (default ``split``) the split, or ``split`` (default ``train``) when the json has
none. Or from ``labels_csv``, a CSV with a header whose column ``csv_key`` (default ``key``, the
sample key) names the sample and whose columns ``label_key`` and (optional) ``split_key`` give
its class and split; with another ``csv_key`` the sample's json field of that name is matched.

Samples without a video that video2dataset recorded as failed (json ``status`` other than
``success``: it writes the json of a download that failed) are left out with one note per shard;
any other sample without a video, or without the json its label needs, is a bad row naming the
shard and the key. A shard that is missing, unreadable, compressed or truncated is a bad row
naming the shard (with ``skip_bad``, the complete samples before a truncation are kept).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from ccl_cache.errors import ManifestError
from ccl_cache.manifest.formats.braces import expand_braces, has_braces
from ccl_cache.manifest.formats.folder import VIDEO_EXTENSIONS
from ccl_cache.manifest.parse import READERS, _check_labels, _Context, _csv_rows, _Item, _Parsed, _read_lines, _record

if TYPE_CHECKING:
    from ccl_cache.media.tarshard import TarIndex, TarMember

_KEY_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # WebDataset's base_plus_ext
_META = re.compile(r"__[^/]*__($|/)")  # names WebDataset skips (__key__-style metadata)
_JSON_LIMIT = 16 << 20  # a sidecar larger than this is no metadata file
_VIDEO_EXTS = tuple(e.lstrip(".") for e in VIDEO_EXTENSIONS)

_Sample = tuple[str, dict[str, "TarMember"]]  # key, extension -> member


def _shard_paths(ctx: _Context) -> list[tuple[str, Path]]:
    """(where it was named, shard path) of every shard the input names, in order."""
    from ccl_cache.media.tarshard import is_tar_name

    path = ctx.path
    if not path.exists() and has_braces(str(path)):
        return [(str(path), Path(s)) for s in _expand(str(path), str(path))]
    if path.is_dir():
        shards = sorted(p for p in path.iterdir() if is_tar_name(p) and p.is_file() and not p.name.startswith("."))
        if not shards:
            raise ManifestError(f"{path}: no .tar shards in this folder; point at the shards (a .tar, a brace "
                                "pattern such as 'data/{00000..00009}.tar', or a list file)")
        return [(str(p), p) for p in shards]
    if is_tar_name(path) or not path.is_file():
        return [(str(path), path)]
    root = ctx.root or path.parent
    shards: list[tuple[str, Path]] = []
    for number, line in enumerate(_read_lines(path, ctx.problems, strict=True), start=1):
        entry = line.strip()
        if entry and not entry.startswith("#"):
            where = f"{path}:{number}"
            shards += [(where, Path(os.path.normpath(os.path.join(root, s)))) for s in _expand(entry, where)]
    if not shards:
        raise ManifestError(f"{path}: the shard list names no shard; write one .tar path or pattern per line")
    return shards


def _expand(pattern: str, where: str) -> list[str]:
    try:
        return expand_braces(pattern)
    except ValueError as exc:
        raise ManifestError(f"{where}: {exc}") from None


def _samples(ctx: _Context, index: TarIndex) -> list[_Sample]:
    """The shard's members grouped into samples (WebDataset's group_by_keys)."""
    samples: list[_Sample] = []
    for member in index.members:
        match = _KEY_EXT.match(member.name)
        if match is None or _META.match(member.name):
            continue  # no extension: not part of a sample
        key, ext = match.group(1), match.group(2).lower()
        if not samples or samples[-1][0] != key:
            samples.append((key, {}))
        fields = samples[-1][1]
        if ext in fields:
            ctx.problems.bad(f"{index.shard} (sample {key!r})", f"member {member.name!r} repeats extension .{ext}",
                             "write each sample's files once, next to each other")
            continue
        fields[ext] = member
    return samples


def _json(ctx: _Context, where: str, member: TarMember) -> dict[str, Any] | None:
    from ccl_cache.media.tarshard import read_member

    try:
        meta = json.loads(read_member(member, _JSON_LIMIT).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        ctx.problems.bad(where, f"member {member.name!r} is not valid UTF-8 JSON ({exc})",
                         "fix or re-create the shard")
        return None
    except OSError as exc:
        ctx.problems.bad(where, f"member {member.name!r} cannot be read ({exc})", "re-download or re-create the shard")
        return None
    if not isinstance(meta, dict):
        ctx.problems.bad(where, f"member {member.name!r} holds a JSON {type(meta).__name__}, not an object",
                         "write the sample's metadata as one JSON object")
        return None
    return meta


def _text(value: Any) -> str | None:
    """A class or split name from a JSON value: a non-empty string, or an integer as text."""
    if isinstance(value, str) and value.strip():
        return value.strip()
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


class _Labels:
    """Where labels and splits come from: each sample's json, or a side CSV."""

    def __init__(self, ctx: _Context, label_key: str, split_key: str, split: str, labels_csv: str | None,
                 csv_key: str) -> None:
        self.ctx, self.label_key, self.split_key, self.split = ctx, label_key, split_key, split
        self.csv_key = csv_key
        self.csv = None if labels_csv is None else Path(os.path.abspath(labels_csv))
        self.table = None if self.csv is None else self._read_csv(self.csv)

    def needs_json(self) -> bool:
        return self.table is None or self.csv_key != "key"

    def _read_csv(self, path: Path) -> dict[str, tuple[str, str | None]]:
        if not path.is_file():
            raise ManifestError(f"{path}: labels_csv not found; give the CSV of {self.csv_key},{self.label_key} rows")
        rows = list(_csv_rows(_read_lines(path, self.ctx.problems)))
        header = [h.lower() for h in rows[0][1]] if rows else []
        missing = [c for c in (self.csv_key, self.label_key) if c.lower() not in header]
        if missing:
            raise ManifestError(f"{path}:1: missing column(s) {', '.join(missing)} in header {header}; the labels CSV "
                                f"needs a header with {self.csv_key},{self.label_key}[,{self.split_key}]")
        col = {name: header.index(name.lower()) for name in (self.csv_key, self.label_key, self.split_key)
               if name.lower() in header}
        table: dict[str, tuple[str, str | None]] = {}
        for number, row in rows[1:]:
            where = f"{path}:{number}"
            if len(row) != len(header):
                self.ctx.problems.bad(where, f"expected {len(header)} fields but found {len(row)}",
                                      "quote fields that contain commas")
            elif row[col[self.csv_key]] in table:
                self.ctx.problems.bad(where, f"{self.csv_key} {row[col[self.csv_key]]!r} is listed twice", "keep one row")
            else:
                split = row[col[self.split_key]] if self.split_key in col else ""
                table[row[col[self.csv_key]]] = (row[col[self.label_key]], split or None)
        return table

    def of(self, where: str, key: str, meta: dict[str, Any] | None) -> tuple[str, str] | None:
        """(label, split) of a sample, or None (reported) when it has none."""
        if self.table is None:
            return self._from_json(where, meta)
        name = key if self.csv_key == "key" else _text((meta or {}).get(self.csv_key))
        entry = None if name is None else self.table.get(name)
        if entry is None:
            self.ctx.problems.bad(where, f"sample {self.csv_key}={name!r} is not in {self.csv}",
                                  "add a row for it, or name the matching column with csv_key=")
            return None
        return entry[0], entry[1] or self.split

    def _from_json(self, where: str, meta: dict[str, Any] | None) -> tuple[str, str] | None:
        if meta is None:
            self.ctx.problems.bad(where, f"no .json member, and the label is read from its field {self.label_key!r}",
                                  "add the json sidecars or give labels_csv= (a CSV of key,label)")
            return None
        label = _text(meta.get(self.label_key))
        if label is None:
            found = ", ".join(sorted(meta)[:12]) or "none"
            self.ctx.problems.bad(where, f"its json has no class name in field {self.label_key!r} (fields: {found})",
                                  "name the label field with label_key= (e.g. --format webdataset:label_key=caption) "
                                  "or give labels_csv=")
            return None
        split = meta.get(self.split_key)
        return label, _text(split) or self.split


def _video(fields: dict[str, TarMember], ext: str | None) -> TarMember | None:
    if ext is not None:
        return fields.get(ext.lower().lstrip("."))
    return next((m for e, m in fields.items() if e in _VIDEO_EXTS), None)


def _shard_items(ctx: _Context, index: TarIndex, labels: _Labels, ext: str | None) -> list[_Item]:
    from ccl_cache.media.tarshard import member_path

    items: list[_Item] = []
    failed: list[str] = []
    for key, fields in _samples(ctx, index):
        where = f"{index.shard} (sample {key!r})"
        video = _video(fields, ext)
        read = "json" in fields and (labels.needs_json() or video is None)
        meta = _json(ctx, where, fields["json"]) if read else None
        if read and meta is None:
            continue  # its json is reported as bad
        if video is None:
            status = (meta or {}).get("status")
            if isinstance(status, str) and status != "success":
                failed.append(f"{key} ({status})")
            else:
                has = ", ".join("." + e for e in fields)
                wanted = f".{ext.lstrip('.')} member" if ext else \
                    f"video member ({', '.join('.' + e for e in _VIDEO_EXTS[:4])}, ...)"
                ctx.problems.bad(where, f"no {wanted}; it has: {has}",
                                 "add the video, or name its extension with ext= (e.g. ext=webm)")
            continue
        found = labels.of(where, key, meta)
        rec = None if found is None else _record(ctx, where, id=key, path=member_path(index.shard, video.name),
                                                 label=found[0], split=found[1])
        if rec is not None:
            items.append((where, rec))
    if failed:
        ctx.problems.note(str(index.shard), f"{len(failed)} sample(s) without video left out: video2dataset recorded "
                                            f"them as not downloaded (first: {failed[0]})")
    return items


@READERS.register("webdataset")
def read_webdataset(
    ctx: _Context, label_key: str = "label", split_key: str = "split", split: str = "train",
    labels_csv: str | None = None, csv_key: str = "key", ext: str | None = None,
    classes: Sequence[str] | None = None,
) -> _Parsed:
    """WebDataset tar shards (see the module docstring): one record per sample with a video."""
    # Imported here: the media room loads PyAV, which a plain `import ccl_cache.manifest` should not.
    from ccl_cache.errors import MediaError
    from ccl_cache.media.tarshard import tar_index

    labels = _Labels(ctx, label_key, split_key, split, labels_csv, csv_key)
    items: list[_Item] = []
    for where, shard in _shard_paths(ctx):
        if not shard.is_file():
            what = "not a file" if shard.exists() else "not found"
            ctx.problems.bad(where, f"tar shard {shard} {what}", "check the pattern, the shard list or root")
            continue
        try:
            index = tar_index(shard)
        except MediaError as exc:
            reason = str(exc).removeprefix(f"{exc.path}: ")
            ctx.problems.bad(where, f"tar shard {shard} {reason}", "re-download or re-create the shard")
            continue
        if index.damage is not None:
            ctx.problems.bad(str(shard), f"tar shard is damaged: {index.damage}",
                             "re-download or re-create the shard")
        items += _shard_items(ctx, index, labels, ext)
    return _check_labels(items, classes, ctx.problems), classes
