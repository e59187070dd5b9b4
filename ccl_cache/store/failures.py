"""What a failure in the store's ledger rules out: the precedence of failure stages and the rows a
run may use. The one place that decides which clips each consumer leaves out.

Stages, from the most to the least ruled out: ``decode`` (the file could not be opened: no use of
the clip), ``image`` (its frames failed: the image teacher and the video student, which reads the
same frames), ``teacher`` (a teacher's forward pass failed; the ledger does not say which teacher,
so every teacher's runs leave it out) and ``audio`` (only runs that use the audio teacher).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

# The ledger keeps one failure per row: the one that rules out the most (lower rules out more).
STAGE_PRECEDENCE: dict[str, int] = {"decode": 0, "image": 1, "teacher": 2, "audio": 3}


def stage_rank(stage: str) -> int:
    """Lower rules out more (an unknown stage ranks last)."""
    return STAGE_PRECEDENCE.get(stage, len(STAGE_PRECEDENCE))


def graver(stage: str, than: str | None) -> bool:
    """Whether a failure at ``stage`` rules out more than one at ``than`` (None: no failure yet)."""
    return than is None or stage_rank(stage) < stage_rank(than)


def usable_rows(store: Any, teachers: Mapping[str, str]) -> tuple[np.ndarray, dict[str, int]]:
    """Bool (N,) of rows a run may use, and the count excluded per reason.

    Excluded: rows in the failure ledger whose failure stops the video or may concern a used
    teacher (stage "decode"; "image", the frames the student reads too; "teacher", which does not
    say which teacher; "audio" only when the audio teacher is used), and rows a used teacher has
    not finished. ``teachers={}`` (the embedding pass, the frame cache): every row except audio
    failures.
    """
    ok = np.ones(store.n, dtype=bool)
    excluded: dict[str, int] = {}
    for fail in store.failures():
        stage = fail["stage"]
        if stage == "audio" and "audio" not in teachers:
            continue  # an audio decode failure does not matter to a run without the audio teacher
        if ok[fail["row"]]:
            ok[fail["row"]] = False
            reason = f"failed ({stage}: {fail['reason']})"
            excluded[reason] = excluded.get(reason, 0) + 1
    for modality, key in teachers.items():
        done = np.asarray(store.teacher(key).done[:], dtype=bool)
        missing = ok & ~done
        if missing.any():
            excluded[f"{key} not extracted"] = int(missing.sum())
            ok &= done
    return ok, excluded


def rows_failed_for(n: int, failures: list[dict[str, Any]], key: str, modalities: set[str]) -> np.ndarray:
    """Rows whose failure concerns teacher ``key``: its own modality's stage, or a shared one
    (decode, teacher)."""
    others = modalities - {key.split("/")[0]}
    failed = np.zeros(n, dtype=bool)
    failed[[f["row"] for f in failures if f["stage"] not in others]] = True
    return failed


def rows_stale_after_rerun(failures: list[dict[str, Any]], stored: set[str], rerun: set[str]) -> np.ndarray:
    """Rows whose ledger entry a run that recomputes the teachers ``rerun`` from scratch (``extract
    --overwrite``) makes stale, of a store holding the teachers ``stored``.

    Every entry when every stored teacher is recomputed. Otherwise only the entries of a
    modality's own stage ("audio", "image") whose every stored teacher is recomputed: a shared
    stage ("decode", "teacher") or another modality's may concern a teacher kept as it is (its rows
    stay done, masked, and need the entry that says why); the run retries those rows anyway.
    """
    if stored <= rerun:
        return np.unique(np.asarray([f["row"] for f in failures], dtype=np.int64))
    kept = {key.split("/")[0] for key in stored - rerun}
    whole = {key.split("/")[0] for key in rerun} - kept
    return np.unique(np.asarray([f["row"] for f in failures if f["stage"] in whole], dtype=np.int64))
