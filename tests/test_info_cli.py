"""`ccl-cache info`: the summary (health numbers) and the command's two outputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from ccl_cache.manifest import ClipRecord, Manifest
from ccl_cache.store import BACKENDS, create_store, summarize
from ccl_cache.store.space import human_bytes
from ccl_cache_cli.main import cli

N, CR = 12, 4


def build(path: Path) -> None:
    """A store with known health: 1 NaN row, 1 duplicate, 2 masked, failures, a student."""
    records = [ClipRecord(id=f"c{i}", path=f"/v/{i}.mp4", label=("a", "b")[i % 2],
                          split="train" if i < 8 else "test") for i in range(N)]
    with create_store(path, Manifest.from_records(records), chunk_rows=CR) as s:
        s.create_teacher("audio/small", 2, None, fingerprint={"arch": "small"})
        emb = np.stack([np.full(2, 3.0), np.full(2, 4.0)] * 4)[:8]  # norms alternate 3√2, 4√2
        emb[5] = [np.nan, 1.0]
        emb[6] = [7.0, 7.0]  # unique values everywhere except rows 0/2/4 and 1/3/7
        mask = np.ones(8, dtype=bool)
        mask[[2, 3]] = False  # masked rows are left out of the norm and duplicate statistics
        s.write_rows("audio/small", slice(0, 8), emb, None, mask)
        s.create_teacher("image/small", 3, 2, fingerprint={"arch": "img"})
        s.record_clips(np.arange(8), duration=np.full(8, 2.0), has_audio=~np.isin(np.arange(8), [2, 3]))
        s.record_failure(9, "decode", "decode", "broken file")
        s.record_failure(10, "audio", "partial", "half", coverage=0.6)
        s.record_failure(11, "image", "timeout", "too slow")
        s.write_student("run1", np.zeros((N, 4)), {"method": "ccl"})


@pytest.fixture(params=BACKENDS.names())
def store_file(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    path = tmp_path / f"cache{BACKENDS.get(request.param).suffixes[0]}"
    build(path)
    return path


def test_info_json_reports_health(store_file: Path) -> None:
    result = CliRunner().invoke(cli, ["info", str(store_file), "--json"])
    assert result.exit_code == 0, result.output
    s = json.loads(result.stdout)
    assert s["n"] == N and s["clips"]["by_split"] == {"test": 4, "train": 8}
    assert s["clips"]["by_class"] == {"a": 6, "b": 6} and s["clips"]["probed"] == 8 and s["clips"]["no_audio"] == 2
    audio = s["teachers"]["audio/small"]
    assert (audio["done"], audio["present"], audio["masked"], audio["pending"]) == (8, 6, 2, 4)
    # rows 0, 4 share one embedding and rows 1, 7 another (rows 2, 3 are masked): 2 duplicates
    assert audio["nonfinite_rows"] == 1 and audio["duplicate_rows"] == 2
    # failures that concern audio: decode (shared stage) and the audio one, not the image timeout
    assert audio["failed"] == 2 and s["teachers"]["image/small"]["failed"] == 2
    norm = audio["norm"]
    # present, finite rows 0, 1, 4, 6, 7 (row 5 holds a NaN)
    expected = np.linalg.norm(np.array([[3, 3], [4, 4], [3, 3], [7, 7], [4, 4]], float), axis=1)
    assert norm["count"] == 5 and norm["mean"] == pytest.approx(expected.mean(), rel=1e-3)
    assert norm["min"] == pytest.approx(expected.min(), rel=1e-3)
    assert norm["max"] == pytest.approx(expected.max(), rel=1e-3)
    assert s["teachers"]["image/small"]["done"] == 0 and s["teachers"]["image/small"]["norm"]["count"] == 0
    assert s["failures"]["total"] == 3 and s["failures"]["by_reason"] == {"decode": 1, "partial": 1, "timeout": 1}
    assert s["failures"]["partial_by_coverage"]["50-75%"] == 1
    assert s["students"]["run1"]["dim"] == 4 and s["students"]["run1"]["attrs"]["method"] == "ccl"
    assert s["provenance"]["format"] == "ccl-cache" and s["size_bytes"] > 0 and s["leases"] == []


def test_info_tables_go_to_stderr(store_file: Path) -> None:
    result = CliRunner().invoke(cli, ["info", str(store_file)])
    assert result.exit_code == 0, result.output
    assert result.stdout == ""  # stdout stays clean for --json users
    for text in ("audio/small", "image/small", "3 failures", "partial", "run1", "8/12", "by stage: decode 1, audio 1, image 1"):
        assert text in result.stderr
    # the store's size in the one formatter every command uses ("12.34 KiB", as in the plans and errors)
    size = json.loads(CliRunner().invoke(cli, ["info", str(store_file), "--json"]).stdout)["size_bytes"]
    assert size >= 1024 and f"{human_bytes(size)}, chunks of {CR} rows" in result.stderr


def test_summarize_scans_in_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "cache.zarr"
    build(path)
    from ccl_cache.store import base, open_store

    monkeypatch.setattr(base, "_BLOCK_BYTES", 1)  # one chunk per block: same numbers
    with open_store(path) as s:
        small = summarize(s)
    monkeypatch.undo()
    with open_store(path) as s:
        assert summarize(s)["teachers"] == small["teachers"]


def test_info_on_a_damaged_store_fails_cleanly(tmp_path: Path) -> None:
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 50)
    out = subprocess.run([sys.executable, "-m", "ccl_cache_cli.main", "info", str(bad), "--json"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and out.stdout == ""
    assert "bad.h5" in out.stderr and "damaged" in out.stderr and "Traceback" not in out.stderr


def test_info_names_the_failed_clips(tmp_path: Path) -> None:
    """`info` gave counts only; it names the failed clips (id, path, reason), all with --failures."""
    path = tmp_path / "cache.zarr"
    build(path)
    result = CliRunner().invoke(cli, ["info", str(path), "--failures", "--json"])
    assert result.exit_code == 0, result.output
    s = json.loads(result.stdout)
    assert [(f["id"], f["path"], f["reason"]) for f in s["failed_clips"]] == [
        ("c9", "/v/9.mp4", "decode"), ("c10", "/v/10.mp4", "partial"), ("c11", "/v/11.mp4", "timeout")]
    assert s["failures"]["first"] == s["failed_clips"]  # fewer than the listed limit
    shown = CliRunner().invoke(cli, ["info", str(path)]).stderr
    assert "/v/10.mp4" in shown and "too slow" in shown


def test_info_names_embeddings_whose_norm_is_far_from_the_rest(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    records = [ClipRecord(id=f"c{i}", path=f"/v/{i}.mp4", label="a") for i in range(24)]
    emb = rng.normal(size=(24, 8))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    emb *= rng.uniform(0.95, 1.05, size=(24, 1))
    emb[7] *= 40.0  # e.g. a clip whose audio is clipped noise
    with create_store(tmp_path / "s.zarr", Manifest.from_records(records), chunk_rows=8) as s:
        s.create_teacher("audio/small", 8, None, fingerprint={"arch": "small"})
        s.write_rows("audio/small", slice(0, 24), emb, None, np.ones(24, bool))
    result = CliRunner().invoke(cli, ["info", str(tmp_path / "s.zarr"), "--json"])
    outliers = json.loads(result.stdout)["teachers"]["audio/small"]["norm_outliers"]
    assert outliers["count"] == 1 and outliers["first"][0]["id"] == "c7"
    shown = CliRunner().invoke(cli, ["info", str(tmp_path / "s.zarr")]).stderr
    assert "1 clip(s) with an embedding norm far from the others'" in shown and "c7" in shown
