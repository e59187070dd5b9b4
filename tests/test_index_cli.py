"""`ccl-cache index`: build indexes from a store's student and teacher embeddings via the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from ccl_cache.errors import ConfigError
from ccl_cache.search.index import load_index
from ccl_cache.manifest import ClipRecord, Manifest
from ccl_cache.store import create_store
from ccl_cache_cli.main import cli

N = 40


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 clips (train/test alternating), a student run and a clip-level audio teacher whose
    rows 0, 4, 8, ... have no audio."""
    path = tmp_path_factory.mktemp("cli") / "cache.zarr"
    records = [ClipRecord(id=f"clip{i:02d}", path=f"/data/{i}.mp4", label=f"c{i % 4}",
                          split="train" if i % 2 == 0 else "test") for i in range(N)]
    rng = np.random.default_rng(5)
    with create_store(path, Manifest.from_records(records), chunk_rows=8) as store:
        store.write_student("ccl_small", rng.standard_normal((N, 24)).astype(np.float32), {"student": "small"})
        store.create_teacher("audio/small_audio", dim=12, frames=None, dtype="float16", fingerprint={"arch": "x"})
        for lo in range(0, N, 8):
            mask = np.arange(lo, lo + 8) % 4 != 0
            store.write_rows("audio/small_audio", slice(lo, lo + 8), rng.standard_normal((8, 12)).astype(np.float32),
                             np.zeros((8, 1, 2)), mask)
    return path


def invoke(*args: str):
    return CliRunner().invoke(cli, ["index", *args])


def test_index_student_run_and_search(tmp_path: Path, store_path: Path) -> None:
    out = tmp_path / "idx"
    result = invoke(str(store_path), "--run", "ccl_small", "--out", str(out), "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["source"] == "student:ccl_small" and info["split"] == "train"
    assert info["vectors"] == N // 2 and info["dim"] == 24 and info["index_type"] == "flat"
    index = load_index(out, store=store_path)
    from ccl_cache.store import open_store

    with open_store(store_path) as store:
        emb = store.student("ccl_small")
    scores, rows = index.search(emb[[0, 10, 3]], 3)
    # Train clips find themselves; a test clip (row 3) is not in the index.
    assert rows[0, 0] == 0 and rows[1, 0] == 10 and 3 not in rows[2]
    assert set(rows.ravel()) <= set(range(0, N, 2))
    assert index.meta.clip_ids[:2] == ("clip00", "clip02")


def test_index_teacher_reports_masked_rows(tmp_path: Path, store_path: Path) -> None:
    out = tmp_path / "idx"
    result = invoke(str(store_path), "--teacher", "audio/small_audio", "--split", "all", "--out", str(out),
                    "--type", "factory:IVF4,Flat", "--nprobe", "2", "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["excluded"] == {"not_extracted": 0, "missing": N // 4}
    assert info["vectors"] == N - N // 4 and info["nprobe"] == 2 and info["factory"] == "IVF4,Flat"
    index = load_index(out)
    assert not set(index.meta.rows) & set(range(0, N, 4))  # no row without audio was indexed
    # Asking for more IVF lists to probe than exist is capped, and said.
    capped = invoke(str(store_path), "--teacher", "audio/small_audio", "--out", str(tmp_path / "ivf"),
                    "--type", "ivf", "--nprobe", "50", "--json")
    assert capped.exit_code == 0, capped.output
    info = json.loads(capped.stdout)
    assert info["nprobe"] == 1 and "nprobe 50 > nlist 1" in info["notes"][0]


def test_ivf_default_is_calibrated_and_shown(tmp_path: Path, store_path: Path) -> None:
    out = tmp_path / "ivf"
    result = invoke(str(store_path), "--run", "ccl_small", "--out", str(out), "--type", "ivf",
                    "--target-recall", "0.9", "--json")
    assert result.exit_code == 0, result.output
    cal = json.loads(result.stdout)["calibration"]
    # 20 vectors make a single IVF list: the ladder is that one rung, exhaustive, so exact.
    assert cal["target_recall"] == 0.9 and cal["ladder"] == [[1, 1.0]] and cal["queries"] == N // 2
    assert load_index(out).meta.calibration == cal
    human = invoke(str(store_path), "--run", "ccl_small", "--out", str(out), "--type", "ivf", "--overwrite")
    assert human.exit_code == 0, human.output
    assert "nprobe calibration" in human.output and "recall@10 1.000" in human.output


@pytest.mark.parametrize("value", ["0", "1.5", "-0.1"])
def test_target_recall_is_validated(tmp_path: Path, store_path: Path, value: str) -> None:
    result = invoke(str(store_path), "--run", "ccl_small", "--out", str(tmp_path / "idx"), "--type", "ivf",
                    "--target-recall", value)
    assert result.exit_code == 2 and "--target-recall" in result.output
    assert not (tmp_path / "idx").exists()


def test_run_directory_resolves_the_run_name(tmp_path: Path, store_path: Path) -> None:
    run_dir = tmp_path / "runs" / "whatever"
    run_dir.mkdir(parents=True)
    (run_dir / "summary.json").write_text(json.dumps({"run": "ccl_small"}))
    out = tmp_path / "idx"
    result = invoke(str(store_path), "--run", str(run_dir), "--out", str(out), "--type", "hnsw")
    assert result.exit_code == 0, result.output
    assert load_index(out).meta.source == "student:ccl_small"
    assert "HNSW32,Flat" in result.output  # the human summary table (stderr)
    # A directory named like the run works without summary.json too.
    named = tmp_path / "ccl_small"
    named.mkdir()
    result = invoke(str(store_path), "--run", str(named), "--out", str(out), "--overwrite")
    assert result.exit_code == 0, result.output


def test_refusals(tmp_path: Path, store_path: Path) -> None:
    out = tmp_path / "idx"
    assert invoke(str(store_path), "--out", str(out)).exit_code == 2  # neither --run nor --teacher
    assert "exactly one" in invoke(str(store_path), "--run", "a", "--teacher", "b", "--out", str(out)).output
    bad_type = invoke(str(store_path), "--run", "ccl_small", "--out", str(out), "--type", "annoy")
    assert bad_type.exit_code == 2 and "factory:" in bad_type.output
    unknown = invoke(str(store_path), "--run", "nope", "--out", str(out))
    assert isinstance(unknown.exception, ConfigError) and "ccl_small" in str(unknown.exception)
    assert invoke(str(store_path), "--run", "ccl_small", "--out", str(out)).exit_code == 0
    again = invoke(str(store_path), "--run", "ccl_small", "--out", str(out))
    assert isinstance(again.exception, ConfigError) and "--overwrite" in str(again.exception)
    assert invoke(str(store_path), "--run", "ccl_small", "--out", str(out), "--overwrite").exit_code == 0


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_a_gpu_asked_for_where_there_is_none_is_refused(tmp_path: Path, store_path: Path) -> None:
    """`--device cuda` without a GPU was quietly served by the CPU (a note at most), unlike
    every other command; now it is refused before the store is read, and nothing is written."""
    out = tmp_path / "idx"
    result = invoke(str(store_path), "--run", "ccl_small", "--out", str(out), "--device", "cuda")
    assert isinstance(result.exception, ConfigError) and "pass --device cpu" in str(result.exception)
    result = invoke(str(store_path), "--run", "no_such_run", "--out", str(out), "--device", "cuda")
    assert "pass --device cpu" in str(result.exception)  # the device first, before the store is read
    assert not out.exists()
    built = invoke(str(store_path), "--run", "ccl_small", "--out", str(out), "--device", "cpu")
    assert built.exit_code == 0, built.output
    with pytest.raises(ConfigError, match="CUDA is not available"):
        load_index(out, device="cuda")


def test_index_store_takes_a_path_as_load_index_does(tmp_path: Path, store_path: Path) -> None:
    """index_store(path, ...) failed with AttributeError ('str' object has no attribute 'clips')."""
    from ccl_cache.search.gallery import index_store

    vindex, src = index_store(str(store_path), tmp_path / "idx", run="ccl_small")
    assert src.source == "student:ccl_small" and vindex.count == len(src.rows)
    assert load_index(tmp_path / "idx", store=store_path).count == vindex.count


def test_an_index_built_from_a_relative_store_path_finds_it_from_anywhere(
        tmp_path: Path, store_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sidecar recorded `--store av.zarr` as given, so `retrieve` from another folder could not
    find the store, or found another store of that name there."""
    from ccl_cache.search.retrieve import resolve_store_path

    monkeypatch.chdir(store_path.parent)
    assert invoke(store_path.name, "--run", "ccl_small", "--out", str(tmp_path / "idx")).exit_code == 0
    monkeypatch.chdir(tmp_path)
    meta = load_index(tmp_path / "idx").meta
    assert Path(meta.store_path).is_absolute()
    assert resolve_store_path(tmp_path / "idx", meta.store_path, None) == store_path.absolute()
