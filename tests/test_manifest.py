"""Manifest readers (csv, vggsound, ucf101, activitynet, folder), errors, skip_bad and writing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ccl_cache.errors import ConfigError, ManifestError
from ccl_cache.manifest import (
    READERS, ClipRecord, Manifest, detect_format, load_manifest, write_csv,
)


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


# ---------------------------------------------------------------------------------- generic CSV


def test_csv_resolves_paths_keeps_spaces_unicode_and_ignores_extra_columns(tmp_path: Path) -> None:
    touch(tmp_path / "vids" / "dög run.mp4")
    touch(tmp_path / "vids" / "cat 1.mp4")
    absolute = touch(tmp_path / "elsewhere" / "x.mp4")
    csv_path = write(tmp_path / "m.csv",
                     "\ufeffid,path,label,split,start,end,comment\n"
                     "a,vids/dög run.mp4,dog,train,1.5,3.25,hello\n"
                     '"b","vids/cat 1.mp4","cat","test",,,"with, comma"\n'
                     f"c,{absolute},cat,train,,,\n")
    m = load_manifest(csv_path)
    assert [r.id for r in m.records] == ["a", "b", "c"]
    assert m.records[0].path == str(tmp_path / "vids" / "dög run.mp4")
    assert (m.records[0].start, m.records[0].end) == (1.5, 3.25)
    assert m.records[1] == ClipRecord("b", str(tmp_path / "vids" / "cat 1.mp4"), "cat", "test")
    assert m.records[2].path == str(absolute)
    assert m.classes == ("cat", "dog")
    assert m.labels().tolist() == [1, 0, 0] and m.labels().dtype == np.int64
    assert m.skipped == ()


def test_csv_root_option_and_default_split(tmp_path: Path) -> None:
    touch(tmp_path / "data" / "v.mp4")
    csv_path = write(tmp_path / "lists" / "m.csv", "id,path,label\nv,v.mp4,x\n")
    with pytest.raises(ManifestError, match=r"m\.csv:2: file not found"):
        load_manifest(csv_path)
    m = load_manifest(csv_path, root=tmp_path / "data")
    assert m.records[0].path == str(tmp_path / "data" / "v.mp4") and m.records[0].split == "train"
    unchecked = load_manifest(csv_path, check_files=False)
    assert unchecked.records[0].path == str(tmp_path / "lists" / "v.mp4")


def test_csv_missing_column_names_the_columns(tmp_path: Path) -> None:
    csv_path = write(tmp_path / "m.csv", "id,file,label\na,a.mp4,x\n")
    with pytest.raises(ManifestError, match=r"m\.csv:1: missing column\(s\) path"):
        load_manifest(csv_path, format="csv")


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("b,b.mp4,x,train,,,extra", r"m\.csv:3: expected 6 fields"),
        ("b,b.mp4,x,train,soon,", r"m\.csv:3: start 'soon' is not a number"),
        ("b,b.mp4,x,train,5,2", r"m\.csv:3: .*end \(2\.0\) must be after start \(5\.0\)"),
        ("a,b.mp4,x,train,,", r"m\.csv:3: duplicate id 'a' \(first at .*m\.csv:2\)"),
        ("b,missing.mp4,x,train,,", r"m\.csv:3: file not found: .*missing\.mp4"),
        ("b,b.mp4,,train,,", r"m\.csv:3: .*label must be a non-empty string"),
    ],
)
def test_csv_bad_rows_raise_with_line_or_are_skipped(tmp_path: Path, row: str, message: str) -> None:
    touch(tmp_path / "a.mp4")
    touch(tmp_path / "b.mp4")
    csv_path = write(tmp_path / "m.csv", f"id,path,label,split,start,end\na,a.mp4,x,train,,\n{row}\n")
    with pytest.raises(ManifestError, match=message) as info:
        load_manifest(csv_path)
    assert "skip_bad" in str(info.value)
    m = load_manifest(csv_path, skip_bad=True)
    assert [r.id for r in m.records] == ["a"]
    assert len(m.skipped) == 1 and m.skipped[0][0] == f"{csv_path}:3"


def test_csv_unknown_label_with_class_list(tmp_path: Path) -> None:
    touch(tmp_path / "a.mp4")
    csv_path = write(tmp_path / "m.csv", "id,path,label\na,a.mp4,dog\nb,a.mp4,llama\n")
    with pytest.raises(ManifestError, match=r"m\.csv:3: unknown label 'llama'"):
        load_manifest(csv_path, classes=["dog", "cat"])
    m = load_manifest(csv_path, classes=["dog", "cat"], skip_bad=True)
    # The given class list (sorted) defines ids even for classes without clips.
    assert m.classes == ("cat", "dog") and m.labels().tolist() == [1]


def test_non_utf8_reports_line_and_byte_offset(tmp_path: Path) -> None:
    touch(tmp_path / "a.mp4")
    head = b"id,path,label\na,a.mp4,x\n"
    csv_path = write(tmp_path / "m.csv", head + b"b,a.mp4,caf\xe9\nc,a.mp4,y\n")
    offset = len(head) + len(b"b,a.mp4,caf")
    with pytest.raises(ManifestError, match=rf"m\.csv:3: byte offset {offset} is not valid UTF-8.*re-save the file as UTF-8"):
        load_manifest(csv_path)
    m = load_manifest(csv_path, skip_bad=True)
    assert [r.id for r in m.records] == ["a", "c"]
    assert m.skipped[0][0] == f"{csv_path}:3"


def test_empty_manifests_are_errors(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="empty"):
        load_manifest(write(tmp_path / "e.csv", "\n\n"), format="csv")
    with pytest.raises(ManifestError, match="no clips in the manifest"):
        load_manifest(write(tmp_path / "h.csv", "id,path,label\n"))
    bad_only = write(tmp_path / "b.csv", "id,path,label\na,nothere.mp4,x\n")
    with pytest.raises(ManifestError, match=r"no clips in the manifest \(1 row\(s\) skipped"):
        load_manifest(bad_only, skip_bad=True)
    with pytest.raises(ManifestError, match="manifest not found"):
        load_manifest(tmp_path / "absent.csv")


def test_paths_are_data_not_shell(tmp_path: Path) -> None:
    name = "$(touch pwned); rm -rf x `id` 'q'.mp4"
    touch(tmp_path / name)
    csv_path = tmp_path / "m.csv"
    write_csv(Manifest.from_records([ClipRecord("evil", str(tmp_path / name), "x")]), csv_path)
    m = load_manifest(csv_path)
    assert m.records[0].path == str(tmp_path / name)
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()


# ---------------------------------------------------------------------------------- write / Manifest


def test_write_csv_round_trip_is_exact_and_relative(tmp_path: Path) -> None:
    recs = [
        ClipRecord("a", str(touch(tmp_path / "v" / "ä b.mp4")), "dog", "train", 0.1 + 0.2, 7.0),
        ClipRecord("b", str(touch(tmp_path.parent / f"{tmp_path.name}_out.mp4")), "cat", "val"),
    ]
    m = Manifest.from_records(recs)
    out = tmp_path / "out.csv"
    write_csv(m, out)
    lines = out.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "id,path,label,split,start,end"
    assert lines[1].startswith("a,v/ä b.mp4,dog,train,0.30000000000000004,7.0")
    assert str(tmp_path.parent) in lines[2]  # outside the folder: absolute
    again = load_manifest(out)
    assert again.records == m.records and again.sha256() == m.sha256()
    assert not list(tmp_path.glob(".out.csv.*"))  # no temporary left behind


def test_manifest_split_label_ids_and_hash(tmp_path: Path) -> None:
    recs = [ClipRecord(f"r{i}", f"/d/{i}.mp4", lab, split)
            for i, (lab, split) in enumerate([("b", "train"), ("a", "train"), ("c", "test"), ("a", "test")])]
    m = Manifest.from_records(recs)
    assert len(m) == 4 and m.classes == ("a", "b", "c") and m.splits() == ["train", "test"]
    test = m.split("test")
    assert test.classes == m.classes and test.labels().tolist() == [2, 0]  # ids unchanged
    assert m.label_id("c") == 2
    with pytest.raises(ManifestError, match="unknown class 'z'"):
        m.label_id("z")
    with pytest.raises(ManifestError, match="no clips in split 'val'.*train, test"):
        m.split("val")
    assert m.sha256() == Manifest.from_records(list(recs)).sha256()
    assert m.sha256() != Manifest.from_records(recs[::-1]).sha256()  # row order is provenance
    changed = [*recs[:3], ClipRecord("r3", "/d/3.mp4", "a", "test", 1.0, 2.0)]
    assert m.sha256() != Manifest.from_records(changed).sha256()
    with pytest.raises(ManifestError, match="appears twice"):
        Manifest.from_records([recs[0], recs[0]])


def test_unknown_format_and_options(tmp_path: Path) -> None:
    csv_path = write(tmp_path / "m.csv", "id,path,label\na,a.mp4,x\n")
    with pytest.raises(ConfigError, match="unknown manifest format 'kinetics'"):
        load_manifest(csv_path, format="kinetics")
    with pytest.raises(ConfigError, match="unknown option.*split_id.*accepts: classes, delimiter"):
        load_manifest(csv_path, format="csv", split_id=2)
    assert set(READERS.names()) == {"csv", "vggsound", "ucf101", "activitynet", "folder", "webdataset"}


# ---------------------------------------------------------------------------------- VGGSound


def test_vggsound_pattern_split_folders_and_window(tmp_path: Path) -> None:
    touch(tmp_path / "--abcDEF_12_000030.mp4")
    touch(tmp_path / "test" / "xyz_000007.mp4")
    listing = write(tmp_path / "vggsound.csv",
                    '--abcDEF_12,30,"people marching, loudly",train\nxyz,7,dog barking,test\n')
    assert detect_format(listing) == "vggsound"
    m = load_manifest(listing)
    assert [r.id for r in m.records] == ["--abcDEF_12_000030", "xyz_000007"]
    assert m.records[0].label == "people marching, loudly"
    assert m.records[1].path == str(tmp_path / "test" / "xyz_000007.mp4")
    assert all(r.start is None and r.end is None for r in m.records)  # files are the 10 s cuts
    windowed = load_manifest(listing, format="vggsound", clip_window=True)
    assert (windowed.records[0].start, windowed.records[0].end) == (30.0, 40.0)
    touch(tmp_path / "flat" / "xyz.mp4")
    touch(tmp_path / "flat" / "--abcDEF_12.mp4")
    custom = load_manifest(listing, format="vggsound", root=tmp_path / "flat", pattern="{youtube_id}.mp4")
    assert custom.records[1].path == str(tmp_path / "flat" / "xyz.mp4")


def test_vggsound_errors(tmp_path: Path) -> None:
    touch(tmp_path / "a_000001.mp4")
    listing = write(tmp_path / "v.csv", "a,1,dog,train\nb,2,cat\nc,x,cat,test\nd,4,cat,train\n")
    with pytest.raises(ManifestError, match=r"v\.csv:2: expected 4 fields"):
        load_manifest(listing, format="vggsound")
    m = load_manifest(listing, format="vggsound", skip_bad=True)
    assert [r.id for r in m.records] == ["a_000001"]
    reasons = [reason for _, reason in m.skipped]
    assert "expected 4 fields" in reasons[0] and "not a number" in reasons[1]
    assert "file not found; looked for" in reasons[2] and "d_000004.mp4" in reasons[2]


# ---------------------------------------------------------------------------------- UCF101


def _ucf(tmp_path: Path, train: str, test: str) -> Path:
    lists = tmp_path / "ucfTrainTestlist"
    write(lists / "classInd.txt", "1 ApplyEyeMakeup\r\n2 Basketball\r\n3 Drumming\r\n")
    write(lists / "trainlist01.txt", train)
    write(lists / "testlist01.txt", test)
    for name in ("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", "Basketball/v_Basketball_g01_c01.avi",
                 "Drumming/v_Drumming_g01_c01.avi", "Drumming/v_Drumming_g02_c01.avi"):
        touch(tmp_path / "UCF-101" / name)
    return lists


def test_ucf101_lists_subset_and_sibling_root(tmp_path: Path) -> None:
    lists = _ucf(tmp_path,
                 "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\r\nDrumming/v_Drumming_g01_c01.avi 3\r\n",
                 "Basketball/v_Basketball_g01_c01.avi\r\nDrumming/v_Drumming_g02_c01.avi\r\n")
    assert detect_format(lists) == "ucf101"
    m = load_manifest(lists)
    assert [(r.id, r.label, r.split) for r in m.records] == [
        ("v_ApplyEyeMakeup_g08_c01", "ApplyEyeMakeup", "train"), ("v_Drumming_g01_c01", "Drumming", "train"),
        ("v_Basketball_g01_c01", "Basketball", "test"), ("v_Drumming_g02_c01", "Drumming", "test")]
    assert m.records[0].path == str(tmp_path / "UCF-101" / "ApplyEyeMakeup" / "v_ApplyEyeMakeup_g08_c01.avi")
    assert m.classes == ("ApplyEyeMakeup", "Basketball", "Drumming")
    sub = load_manifest(lists / "trainlist01.txt", classes=["Drumming", "Basketball"])
    assert sub.classes == ("Basketball", "Drumming") and [r.label for r in sub.records] == ["Drumming", "Basketball", "Drumming"]
    with pytest.raises(ManifestError, match="Juggling not in .*classInd.txt"):
        load_manifest(lists, classes=["Juggling"])
    with pytest.raises(ManifestError, match="trainlist02.txt: not found"):
        load_manifest(lists, split_id=2)
    with pytest.raises(ConfigError, match="split_id=4"):
        load_manifest(lists, split_id=4)


def test_ucf101_bad_lines(tmp_path: Path) -> None:
    lists = _ucf(tmp_path,
                 "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 2\nJuggling/v_J.avi 4\nlonely.avi 1\n"
                 "Drumming/v_Drumming_g01_c01.avi 3\n",
                 "Drumming/v_Drumming_g02_c01.avi\n")
    with pytest.raises(ManifestError, match=r"trainlist01\.txt:1: class number 2 is 'Basketball'"):
        load_manifest(lists)
    m = load_manifest(lists, skip_bad=True)
    assert [r.id for r in m.records] == ["v_Drumming_g01_c01", "v_Drumming_g02_c01"]
    assert [w.rsplit(":", 1)[1] for w, _ in m.skipped] == ["1", "2", "3"]
    assert "unknown label 'Juggling'" in m.skipped[1][1]


# ---------------------------------------------------------------------------------- ActivityNet


def test_activitynet_segments_extensions_and_testing_note(tmp_path: Path) -> None:
    database = {
        "abc": {"subset": "training", "duration": 30.0, "annotations": [
            {"segment": [1.0, 5.5], "label": "Surfing"}, {"segment": [10, 20], "label": "Surfing"}]},
        "d e": {"subset": "validation", "annotations": [{"segment": [0.0, 3.0], "label": "Bathing dog"}]},
        "tst": {"subset": "testing", "annotations": []},
    }
    spec = write(tmp_path / "activity_net.v1-3.min.json", json.dumps({"version": "VERSION 1.3", "database": database}))
    touch(tmp_path / "v_abc.mkv")
    touch(tmp_path / "val" / "v_d e.webm")
    assert detect_format(spec) == "activitynet"
    m = load_manifest(spec)
    assert [(r.id, r.split, r.start, r.end) for r in m.records] == [
        ("abc_0", "train", 1.0, 5.5), ("abc_1", "train", 10.0, 20.0), ("d e_0", "val", 0.0, 3.0)]
    assert m.records[2].path == str(tmp_path / "val" / "v_d e.webm")
    assert m.classes == ("Bathing dog", "Surfing")
    assert len(m.skipped) == 1 and "1 video(s) without annotations" in m.skipped[0][1]


def test_activitynet_errors(tmp_path: Path) -> None:
    bad_json = write(tmp_path / "a.json", '{"database": {"x": {"subset": "training",}}}')
    with pytest.raises(ManifestError, match=r"a\.json:1: not valid JSON"):
        load_manifest(bad_json)
    with pytest.raises(ManifestError, match='"database" object'):
        load_manifest(write(tmp_path / "b.json", "[1, 2]"))
    database = {
        "ok": {"subset": "training", "annotations": [{"segment": [0, 1], "label": "A"},
                                                     {"segment": [5, 2], "label": "A"},
                                                     {"segment": "0-1", "label": "A"}]},
        "gone": {"subset": "training", "annotations": [{"segment": [0, 1], "label": "A"}]},
    }
    spec = write(tmp_path / "c.json", json.dumps({"database": database}))
    touch(tmp_path / "v_ok.mp4")
    with pytest.raises(ManifestError, match=r"database\['ok'\]\.annotations\[1\]: malformed annotation"):
        load_manifest(spec)
    m = load_manifest(spec, skip_bad=True)
    assert [r.id for r in m.records] == ["ok_0"]
    assert [w.split(": ", 1)[1] for w, _ in m.skipped] == [
        "database['ok'].annotations[1]", "database['ok'].annotations[2]", "database['gone']"]
    with pytest.raises(ManifestError, match="not valid UTF-8"):
        load_manifest(write(tmp_path / "d.json", b'{"database": {"\xff": {}}}'), skip_bad=True)


# ---------------------------------------------------------------------------------- folder


def test_folder_per_class_flat_and_split_layouts(tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    touch(flat / "dog" / "a.mp4")
    touch(flat / "dog" / "sub" / "b.MKV")
    touch(flat / "cat" / "notes.txt")  # not a video: ignored, but the class exists
    touch(flat / "dog" / ".hidden.mp4")
    assert detect_format(flat) == "folder"
    m = load_manifest(flat)
    assert [(r.id, r.label, r.split) for r in m.records] == [("dog/a", "dog", "train"), ("dog/sub/b", "dog", "train")]
    assert m.classes == ("cat", "dog")

    split = tmp_path / "split"
    touch(split / "train" / "dog" / "a.mp4")
    touch(split / "validation" / "cat" / "b.mp4")
    touch(split / "test" / "dog" / "a.mp4")
    m = load_manifest(split, format="folder")
    assert [(r.id, r.label, r.split) for r in m.records] == [
        ("test/dog/a", "dog", "test"), ("train/dog/a", "dog", "train"), ("validation/cat/b", "cat", "val")]


def test_folder_stray_video_and_unknown_class(tmp_path: Path) -> None:
    touch(tmp_path / "dog" / "a.mp4")
    touch(tmp_path / "loose.mp4")
    with pytest.raises(ManifestError, match="loose.mp4: video file outside a class folder"):
        load_manifest(tmp_path)
    m = load_manifest(tmp_path, skip_bad=True)
    assert len(m) == 1 and "outside a class folder" in m.skipped[0][1]
    (tmp_path / "loose.mp4").unlink()
    touch(tmp_path / "cow" / "c.mp4")
    with pytest.raises(ManifestError, match="cow/c.mp4: unknown label 'cow'"):
        load_manifest(tmp_path, format="folder", classes=["dog"])


def test_detect_format_refuses_unknown_csv(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="cannot tell the manifest format.*format="):
        detect_format(write(tmp_path / "x.csv", "a,b\n1,2\n"))
    assert detect_format(write(tmp_path / "y.csv", "ID,Path,Label\n")) == "csv"


def test_a_dataset_folder_with_its_own_listing_is_not_read_as_class_folders(tmp_path: Path) -> None:
    """Regression: `extract data/` (a synth dataset: manifest.csv + videos/) built a one-class
    store named "videos" instead of reading data/manifest.csv."""
    write(tmp_path / "data" / "manifest.csv", "id,path,label\n")
    (tmp_path / "data" / "videos").mkdir()
    with pytest.raises(ManifestError, match=r"holds a listing \(manifest.csv\); pass the listing itself"):
        load_manifest(tmp_path / "data")
    (tmp_path / "data" / "videos" / "a.mp4").write_bytes(b"")
    assert load_manifest(tmp_path / "data", format="folder", check_files=False).classes == ("videos",)
