"""The ``ucf101`` format: the official split lists (``classInd.txt``, ``trainlist0N.txt``,
``testlist0N.txt``)."""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Sequence

from ccl_cache.errors import ConfigError, ManifestError
from ccl_cache.manifest.parse import READERS, _Context, _file_missing, _Item, _Parsed, _read_lines, _record, _resolve


def _ucf_class_index(ctx: _Context, path: Path) -> dict[int, str]:
    """``classInd.txt``: "1 ApplyEyeMakeup" lines -> {1: "ApplyEyeMakeup"}."""
    index: dict[int, str] = {}
    for number, line in enumerate(_read_lines(path, ctx.problems), start=1):
        parts = line.split()
        if not parts:
            continue
        where = f"{path}:{number}"
        if len(parts) != 2 or not parts[0].isdigit():
            ctx.problems.bad(where, f"expected '<number> <ClassName>' but found {line.strip()!r}", "fix the line")
        elif int(parts[0]) in index or parts[1] in index.values():
            ctx.problems.bad(where, f"class {parts[1]!r} / number {parts[0]} is listed twice", "remove the duplicate")
        else:
            index[int(parts[0])] = parts[1]
    if not index:
        raise ManifestError(f"{path}: no classes listed; expected lines like '1 ApplyEyeMakeup'")
    return index


def _ucf_line(line: str) -> tuple[str, int | None]:
    """'Class/v_x.avi 1' -> (path, 1); 'Class/v_x.avi' -> (path, None)."""
    parts = line.strip().rsplit(None, 1)
    if len(parts) == 2 and parts[1].isdigit():
        return parts[0], int(parts[1])
    return line.strip(), None


def _ucf_list(ctx: _Context, path: Path, split: str, class_index: dict[int, str], root: Path,
              keep: set[str]) -> list[_Item]:
    names = set(class_index.values())
    items: list[_Item] = []
    for number, line in enumerate(_read_lines(path, ctx.problems), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        rel, number_label = _ucf_line(line)
        parts = PurePosixPath(rel.replace("\\", "/")).parts
        if len(parts) < 2:
            ctx.problems.bad(where, f"expected 'ClassName/v_file.avi' but found {line.strip()!r}", "fix the line")
            continue
        label = parts[0]
        if label not in names:
            ctx.problems.bad(where, f"unknown label {label!r} (not in classInd.txt)", "fix the class folder name")
            continue
        if number_label is not None and class_index.get(number_label) != label:
            ctx.problems.bad(where, f"class number {number_label} is {class_index.get(number_label)!r} in classInd.txt, "
                             f"but the file is in folder {label!r}", "fix the number or the folder")
            continue
        if label not in keep:
            continue  # outside the requested class subset (e.g. UCF51): left out on purpose
        rec = _record(ctx, where, id=PurePosixPath(parts[-1]).stem, path=_resolve(root, "/".join(parts)),
                      label=label, split=split)
        if rec is not None and not _file_missing(ctx, where, rec.path):
            items.append((where, rec))
    return items


@READERS.register("ucf101")
def read_ucf101(ctx: _Context, split_id: int = 1, classes: Sequence[str] | None = None) -> _Parsed:
    """UCF101 split lists: trainlist0N.txt -> "train", testlist0N.txt -> "test".

    ``path`` is the ``ucfTrainTestlist`` folder or a file in it. Videos are looked up under
    ``root`` (default: the sibling folder ``UCF-101`` when it exists, else the list folder).
    ``classes`` keeps only those classes (for UCF51, the 51 classes with audio).
    """
    if split_id not in (1, 2, 3):
        raise ConfigError(f"split_id={split_id!r}; UCF101 has the official splits 1, 2 and 3")
    folder = ctx.path if ctx.path.is_dir() else ctx.path.parent
    files = {name: folder / f"{name}0{split_id}.txt" for name in ("trainlist", "testlist")}
    for needed in (folder / "classInd.txt", *files.values()):
        if not needed.is_file():
            raise ManifestError(f"{needed}: not found; the UCF101 reader needs classInd.txt, trainlist0{split_id}.txt "
                                f"and testlist0{split_id}.txt in {folder}")
    class_index = _ucf_class_index(ctx, folder / "classInd.txt")
    all_names = sorted(class_index.values())
    if classes is not None:
        unknown = sorted(set(classes) - set(all_names))
        if unknown:
            raise ManifestError(f"classes={list(classes)!r}: {', '.join(unknown)} not in {folder / 'classInd.txt'}; "
                                "use the class names exactly as listed there")
    keep = set(classes) if classes is not None else set(all_names)
    sibling = folder.parent / "UCF-101"
    root = ctx.root or (sibling if sibling.is_dir() else folder)
    items = _ucf_list(ctx, files["trainlist"], "train", class_index, root, keep)
    items += _ucf_list(ctx, files["testlist"], "test", class_index, root, keep)
    return items, sorted(keep)
