"""Store integrity (issue "Integrity", items 2 and 3): checksums in every array, lost chunks under
done rows refused, `ccl-cache verify` finds each kind of damage, format errors become named
StoreErrors. Each test damages files the way disks, copies and people do."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from ccl_cache.errors import StoreError
from ccl_cache.store import BACKENDS, create_store, open_store, repair_store, verify_store
from ccl_cache_cli.main import cli
from test_store import CR, N, fill_teacher, make_manifest, rows_data, store_path

KEY = "audio/small"
EMB = f"teachers/{KEY}/embedding"


@pytest.fixture(params=BACKENDS.names())
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


def build(path: Path, checksums: bool = True) -> Path:
    """A store with a clip-level and a frame teacher, a failure, a student and a frame-cache-like
    array; the last chunk (rows 8:10) is the short tail."""
    with create_store(path, make_manifest(), chunk_rows=CR, checksums=checksums) as s:
        fill_teacher(s)
        fill_teacher(s, "image/frames", frames=2, dim=4)
        s.record_failure(3, "decode", "unreadable", "broken file")
        s.write_student("run1", np.random.default_rng(0).standard_normal((N, 5)))
        s.create_array("frames/data", (20, 2, 2, 3), "uint8", chunk_rows=8)[0:20] = np.arange(240, dtype=np.uint8).reshape(20, 2, 2, 3)
    return path


def zarr_chunk(path: Path, array: str, chunk: int) -> Path:
    arr = zarr.open_array(str(path / array), mode="r")
    return path / array / arr.metadata.encode_chunk_key((chunk,) + (0,) * (arr.ndim - 1))


def flip_hdf5_chunk(path: Path, array: str, chunk: int) -> None:
    with h5py.File(path, "r") as f:
        ds = f[array]
        info = ds.id.get_chunk_info_by_coord((chunk * ds.chunks[0],) + (0,) * (ds.ndim - 1))
    raw = bytearray(path.read_bytes())
    raw[info.byte_offset + 5] ^= 0x40
    path.write_bytes(bytes(raw))


def flip(file: Path, at: int = 5) -> None:
    raw = bytearray(file.read_bytes())
    raw[at] ^= 0x40
    file.write_bytes(bytes(raw))


# --------------------------------------------------------------------------- checksums, no false alarms
def test_new_stores_carry_a_checksum_in_every_array_and_verify_clean(tmp_path: Path, backend: str) -> None:
    path = build(store_path(tmp_path, backend))
    with open_store(path) as s:
        assert s.attrs["checksums"] == ("crc32c" if backend == "zarr" else "fletcher32")
        assert s.attrs["schema_version"] == 1  # readers of schema v1 still read it
    report = verify_store(path)
    assert report.ok, [d.describe() for d in report.damage]
    assert report.arrays == 24 and report.chunks > report.arrays  # 8 clip, 5 failure columns, classes, 8, 2
    text_columns = {"clips/id", "clips/path", "clips/split", "classes", "failures/stage", "failures/reason",
                    "failures/message"}
    # HDF5 cannot filter variable-length text: those columns are the only ones without a checksum.
    assert set(report.unchecked) == (set() if backend == "zarr" else text_columns)
    if backend == "zarr":
        codecs = zarr.open_array(str(path / EMB), mode="r").metadata.codecs
        assert type(codecs[-1]).__name__ == "Crc32cCodec"
    else:
        with h5py.File(path, "r") as f:
            assert f[EMB].fletcher32 and f["failures/time"].fletcher32


def test_a_chunk_of_fill_values_is_written_so_a_missing_one_means_lost(tmp_path: Path) -> None:
    """zarr skips chunks equal to the fill value by default: a chunk of masked rows (zero
    embedding, all-False mask) had no file, so a deleted file could not be told from it."""
    path = store_path(tmp_path, "zarr")
    with create_store(path, make_manifest(), chunk_rows=CR) as s:
        s.create_teacher(KEY, 3, None, fingerprint={})
        s.write_rows(KEY, slice(0, 4), np.zeros((4, 3)), np.zeros((4, 2)), np.zeros(4, bool))
    for array in ("embedding", "mask", "done"):
        assert zarr_chunk(path, f"teachers/{KEY}/{array}", 0).is_file()
    assert verify_store(path).ok


# --------------------------------------------------------------------------- each kind of damage
def _damage_zarr(path: Path, kind: str) -> tuple[str, str, tuple[int, int]]:
    """Apply one damage; returns (kind verify must report, array, rows)."""
    if kind == "flipped":
        flip(zarr_chunk(path, EMB, 1))
        return "checksum", EMB, (4, 8)
    if kind == "flipped-compressed":  # the done ledger is zstd-compressed
        flip(zarr_chunk(path, f"teachers/{KEY}/done", 1), at=2)
        return "checksum", f"teachers/{KEY}/done", (4, 8)
    if kind == "truncated":
        file = zarr_chunk(path, EMB, 2)
        file.write_bytes(file.read_bytes()[:10])
        return "truncated", EMB, (8, 10)
    if kind == "deleted":
        zarr_chunk(path, EMB, 1).unlink()
        return "missing", EMB, (4, 8)
    if kind == "deleted-times":
        zarr_chunk(path, f"teachers/{KEY}/times", 0).unlink()
        return "missing", f"teachers/{KEY}/times", (0, 4)
    if kind == "replaced":  # a valid chunk (its checksum matches) in the wrong place
        shutil.copyfile(zarr_chunk(path, EMB, 0), zarr_chunk(path, EMB, 1))
        return "duplicate", EMB, (4, 8)
    if kind == "deleted-failure-column":
        zarr_chunk(path, "failures/reason", 0).unlink()
        return "missing", "failures/reason", (0, 4)
    assert kind == "metadata"
    (path / EMB / "zarr.json").write_text('{"zarr_format": 3, "node_type": "array", "shape": [')
    return "metadata", EMB, None


ZARR_DAMAGE = ["flipped", "flipped-compressed", "truncated", "deleted", "deleted-times", "replaced",
               "deleted-failure-column", "metadata"]


@pytest.mark.parametrize("kind", ZARR_DAMAGE)
def test_verify_names_each_kind_of_damage_in_a_zarr_store(tmp_path: Path, kind: str) -> None:
    path = build(store_path(tmp_path, "zarr"))
    found, array, rows = _damage_zarr(path, kind)
    report = verify_store(path)
    assert not report.ok
    hits = [d for d in report.damage if d.array == array and d.rows == rows and d.kind == found]
    assert hits, [d.describe() for d in report.damage]
    assert str(path) in hits[0].file and (rows is None or hits[0].file.endswith(("0", "1", "2")))
    others = [d for d in report.damage if d not in hits]
    if kind == "replaced":  # the copy's source is named too: which one is the copy cannot be told
        assert [(d.kind, d.rows) for d in others] == [("duplicate", (0, 4))]
    else:
        assert others == [], [d.describe() for d in others]


def _damage_hdf5(path: Path, kind: str) -> tuple[str, str, tuple[int, int] | None]:
    if kind == "flipped":
        flip_hdf5_chunk(path, EMB, 1)
        return "checksum", EMB, (4, 8)
    if kind == "flipped-ledger":  # a gzip-compressed ledger: fletcher32 after compression
        flip_hdf5_chunk(path, "failures/time", 0)
        return "checksum", "failures/time", (0, 4)
    if kind == "replaced":
        with h5py.File(path, "r+") as f:
            ds = f[EMB]
            ds.id.write_direct_chunk((4, 0), ds.id.read_direct_chunk((0, 0))[1])
        return "duplicate", EMB, (4, 8)
    assert kind == "done-without-data"  # a chunk never written under rows marked done
    with h5py.File(path, "r+") as f:
        del f[EMB]
        f.create_dataset(EMB, shape=(N, 3), dtype="float16", chunks=(CR, 3), fillvalue=0, fletcher32=True)
        f[EMB][0:4] = rows_data(slice(0, 4))
        f[EMB][8:10] = rows_data(slice(8, 10))
    return "missing", EMB, (4, 8)


@pytest.mark.parametrize("kind", ["flipped", "flipped-ledger", "replaced", "done-without-data"])
def test_verify_names_each_kind_of_damage_in_an_hdf5_store(tmp_path: Path, kind: str) -> None:
    path = build(store_path(tmp_path, "hdf5"))
    found, array, rows = _damage_hdf5(path, kind)
    report = verify_store(path)
    hits = [d for d in report.damage if d.array == array and d.rows == rows and d.kind == found]
    assert hits and f"dataset /{array}" in hits[0].file, [d.describe() for d in report.damage]
    others = [d for d in report.damage if d not in hits]
    assert others == [] or (kind == "replaced" and [(d.kind, d.rows) for d in others] == [("duplicate", (0, 4))])


def test_damaged_hdf5_metadata_is_a_named_error_and_verify_reports_it(tmp_path: Path) -> None:
    """A bad local heap signature gave `RuntimeError: ... (bad local heap signature)` from h5py."""
    path = build(store_path(tmp_path, "hdf5"))
    raw = bytearray(path.read_bytes())
    heaps = [m.start() for m in re.finditer(b"HEAP", raw)]
    raw[heaps[0]: heaps[0] + 4] = b"XXXX"  # the root group's heap: every lookup fails
    path.write_bytes(bytes(raw))
    with pytest.raises(StoreError, match=r"cache\.h5: .*cannot be read \(RuntimeError: .*heap.*ccl-cache verify"):
        open_store(path)
    report = verify_store(path)
    assert not report.ok and report.damage[0].kind == "metadata" and str(path) in report.damage[0].file


# --------------------------------------------------------------------------- reads refuse damage
@pytest.mark.parametrize("backend_damage", ["zarr-flipped", "zarr-truncated", "zarr-deleted", "hdf5-flipped",
                                            "hdf5-done-without-data"])
def test_every_read_of_damaged_rows_raises_a_named_store_error(tmp_path: Path, backend_damage: str) -> None:
    backend, kind = backend_damage.split("-", 1)
    path = build(store_path(tmp_path, backend))
    _, array, rows = (_damage_zarr if backend == "zarr" else _damage_hdf5)(path, kind)
    from ccl_cache.data.teacher_table import TeacherTable  # what distill reads teachers with

    with open_store(path) as s:
        t = s.teacher(KEY)
        reads = [lambda: s.read_rows(KEY, [rows[0]]), lambda: s.load_teacher(KEY), lambda: t.embedding[rows[0]:rows[1]],
                 lambda: np.asarray(t.embedding), lambda: t.embedding.read_rows([9, rows[0]]),
                 lambda: TeacherTable.load(s, KEY, in_ram=True)]
        for read in reads:
            with pytest.raises(StoreError) as info:
                read()
            message = str(info.value)
            assert message.startswith(f"{path}: array {array!r} row") and f"ccl-cache verify {path}" in message
            assert "--repair" in message and "extract" in message
        other = (0, 4) if rows != (0, 4) else (8, 10)  # undamaged rows still read
        np.testing.assert_array_equal(s.read_rows(KEY, list(range(*other)))[0],
                                      rows_data(slice(*other)).astype(np.float16).astype(np.float32))


def test_rows_never_written_still_read_as_fill(tmp_path: Path, backend: str) -> None:
    """Only rows marked done need their chunks: an unfinished teacher reads as before."""
    path = store_path(tmp_path, backend)
    with create_store(path, make_manifest(), chunk_rows=CR) as s:
        s.create_teacher(KEY, 3, None, fingerprint={})
        s.write_rows(KEY, slice(0, 4), rows_data(slice(0, 4)), None, np.ones(4, bool))
    with open_store(path) as s:
        emb, times, mask = s.load_teacher(KEY)
        assert not emb[4:].any() and not mask[4:].any() and np.isnan(times[4:]).all()
    assert verify_store(path).ok


def test_a_truncated_chunk_in_a_store_without_checksums_is_named_not_a_reshape_error(tmp_path: Path) -> None:
    """It gave `ValueError: cannot reshape array of size ... into shape (4,3)` in info, distill, index."""
    path = build(store_path(tmp_path, "zarr"), checksums=False)
    file = zarr_chunk(path, EMB, 1)
    file.write_bytes(file.read_bytes()[:10])
    with open_store(path) as s, pytest.raises(StoreError, match=r"'teachers/audio/small/embedding' rows 0:10: cannot be "
                                                               r"read \(ValueError: .*reshape.*ccl-cache verify"):
        s.load_teacher(KEY)
    out = subprocess.run([sys.executable, "-m", "ccl_cache_cli.main", "info", str(path)], capture_output=True, text=True)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.count("\n") == 1 and out.stderr.startswith(f"error: {path}: array '{EMB}'")
    report = verify_store(path)
    assert [(d.kind, d.array, d.rows) for d in report.damage] == [("truncated", EMB, (4, 8))]


# --------------------------------------------------------------------------- stores from before checksums
def test_stores_written_before_checksums_open_read_and_verify(tmp_path: Path, backend: str) -> None:
    path = build(store_path(tmp_path, backend), checksums=False)
    with open_store(path, "r+") as s:
        assert "checksums" not in s.attrs and s.checksums is None
        fill_teacher(s, "image/late", dim=2)  # arrays added later stay like the others: no checksum
        emb = s.load_teacher(KEY)[0]
        np.testing.assert_array_equal(emb, rows_data(slice(0, N)).astype(np.float16).astype(np.float32))
    report = verify_store(path)
    assert report.ok and report.checksums is None
    assert "teachers/image/late/embedding" in report.unchecked and EMB in report.unchecked
    result = CliRunner().invoke(cli, ["info", str(path)])
    assert result.exit_code == 0 and "no checksums" in result.stderr, result.output
    result = CliRunner().invoke(cli, ["verify", str(path)])
    assert result.exit_code == 0 and "no checksums" in result.stderr and "no damage found" in result.stderr


def test_lost_chunks_are_found_in_a_zarr_store_without_checksums(tmp_path: Path) -> None:
    """Such stores skipped fill-valued chunks (masked rows): a lost embedding chunk is one whose
    mask chunk is still there."""
    path = build(store_path(tmp_path, "zarr"), checksums=False)
    zarr_chunk(path, EMB, 1).unlink()
    report = verify_store(path)
    assert [(d.kind, d.array, d.rows) for d in report.damage] == [("missing", EMB, (4, 8))]
    with open_store(path) as s, pytest.raises(StoreError, match="marks these rows done but their chunk"):
        s.read_rows(KEY, [5])


# --------------------------------------------------------------------------- the command
def test_verify_cli_exit_status_json_and_repair(tmp_path: Path, backend: str) -> None:
    path = build(store_path(tmp_path, backend))
    clean = CliRunner().invoke(cli, ["verify", str(path), "--json"])
    assert clean.exit_code == 0, clean.output
    assert json.loads(clean.stdout)["ok"] is True
    (_damage_zarr if backend == "zarr" else _damage_hdf5)(path, "flipped")
    damaged = CliRunner().invoke(cli, ["verify", str(path), "--json"])
    assert damaged.exit_code == 1
    data = json.loads(damaged.stdout)
    assert data["ok"] is False and [(d["array"], d["rows"], d["kind"]) for d in data["damage"]] == [(EMB, [4, 8], "checksum")]
    assert any("--repair" in fix for fix in data["fixes"])
    table = CliRunner().invoke(cli, ["verify", str(path)])
    assert table.exit_code == 1 and "checksum" in table.stderr and table.stdout == ""
    info = CliRunner().invoke(cli, ["info", str(path), "--verify", "--json"])
    assert info.exit_code == 1 and json.loads(info.stdout)["verify"]["damage"][0]["array"] == EMB
    repaired = CliRunner().invoke(cli, ["verify", str(path), "--repair"])
    assert repaired.exit_code == 0, repaired.output
    assert "reset" in repaired.stderr and "rerun" in repaired.stderr
    with open_store(path) as s:
        done = s.teacher(KEY).done[:]
        assert not done[4:8].any() and done[:4].all() and done[8:].all()
        assert s.teacher("image/frames").done[:].all()  # other teachers keep their rows
        assert not s.load_teacher(KEY)[0][4:8].any()


def test_repair_of_a_failure_ledger_chunk_redoes_its_rows_in_every_teacher(tmp_path: Path) -> None:
    path = build(store_path(tmp_path, "zarr"))
    flip(zarr_chunk(path, "failures/time", 0), at=2)
    report = repair_store(path)
    assert report.ok and [d.array for d in report.repaired] == ["failures/time"]
    with open_store(path) as s:
        assert s.failures() == []
        for key in (KEY, "image/frames"):
            done = s.teacher(key).done[:]
            assert not done[:4].any() and done[4:].all()


def test_damage_that_extraction_cannot_redo_is_left_with_its_fix(tmp_path: Path) -> None:
    path = build(store_path(tmp_path, "zarr"))
    flip(zarr_chunk(path, "students/run1/embedding", 0))
    report = repair_store(path)
    assert not report.ok and report.repaired == []
    assert report.fixes() == ["rewrite the student run with `ccl-cache embed` (or restore the store from a copy)"]


# --------------------------------------------------------------------------- end to end
def test_index_on_a_damaged_store_fails_with_the_named_error(tmp_path: Path) -> None:
    path = build(store_path(tmp_path, "zarr"))
    zarr_chunk(path, EMB, 1).unlink()
    out = subprocess.run([sys.executable, "-m", "ccl_cache_cli.main", "index", str(path), "--teacher", KEY,
                          "--split", "all", "--out", str(tmp_path / "idx")], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and out.stderr.count("\n") == 1
    assert f"error: {path}: array '{EMB}' rows 4:8: teacher {KEY} marks these rows done" in out.stderr
    assert f"ccl-cache verify {path}" in out.stderr


@pytest.fixture(scope="module")
def extraction(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    from ccl_cache.experiments.synth import SynthConfig, generate
    from ccl_cache.testing.extraction import save_small_teachers, small_extract_args

    folder = tmp_path_factory.mktemp("integrity")
    config = SynthConfig(classes=2, clips_per_class=5, duration=0.6, size=32, pretrain_clips_per_class=0,
                         no_audio=0.25, val_fraction=0.0, test_fraction=0.2, seed=4)
    generate(folder / "synth", config, workers=1)
    audio, image = save_small_teachers(folder, 0, 1)
    args = small_extract_args(audio, image, frames_per_clip=2, batch_size=4)
    return folder / "synth" / "manifest.csv", [a if a != "1" or args[i - 1] != "--workers" else "0"
                                                 for i, a in enumerate(args)]


def _arrays(path: Path) -> dict[str, bytes]:
    with open_store(path) as s:
        names = [f"teachers/{k}/{a}" for k in s.teacher_keys() for a in ("embedding", "times", "mask", "done")]
        names += [f"clips/{c}" for c in ("duration", "has_audio")] + s.generic_arrays()
        return {name: np.asarray(s.array(name)[:]).tobytes() for name in names}


@pytest.mark.filterwarnings("ignore::UserWarning")  # the small teachers' random-weights note
def test_repair_then_the_same_extract_command_gives_back_the_undamaged_store(
        tmp_path: Path, backend: str, extraction: tuple[Path, list[str]]) -> None:
    manifest, args = extraction
    path = store_path(tmp_path, backend)
    command = ["extract", str(manifest), "--store", str(path), *args]
    first = CliRunner().invoke(cli, command)
    assert first.exit_code == 0, first.output
    pristine = tmp_path / f"pristine{path.suffix}"
    (shutil.copytree if backend == "zarr" else shutil.copyfile)(path, pristine)
    image_emb = "teachers/image/small_image/embedding"
    if backend == "zarr":
        flip(zarr_chunk(path, image_emb, 0))
        zarr_chunk(path, "teachers/audio/small_audio/times", 2).unlink()
    else:
        flip_hdf5_chunk(path, image_emb, 0)
    refused = CliRunner().invoke(cli, ["index", str(path), "--teacher", "image/small_image", "--split", "all",
                                       "--out", str(tmp_path / "idx")])
    assert refused.exit_code != 0 and isinstance(refused.exception, StoreError)
    assert CliRunner().invoke(cli, ["verify", str(path), "--repair"]).exit_code == 0
    again = CliRunner().invoke(cli, command)
    assert again.exit_code == 0, again.output
    assert verify_store(path).ok
    assert _arrays(path) == _arrays(pristine)
    if backend == "zarr":  # the very same chunk files
        files = sorted(p.relative_to(pristine) for p in (pristine / "teachers").rglob("*") if p.is_file())
        assert files == sorted(p.relative_to(path) for p in (path / "teachers").rglob("*") if p.is_file())
        assert all((path / f).read_bytes() == (pristine / f).read_bytes() for f in files)
