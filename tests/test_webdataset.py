"""WebDataset / video2dataset tar shards, read in place: the ``webdataset`` manifest format, media
readers on ``<shard>.tar/<member>`` paths, and extract → distill → retrieve over shards.

Shards are written here in video2dataset's layout (``<key>.mp4``, ``<key>.json``, ``<key>.txt``,
members grouped by key, in order; the json holds the input columns plus key/status/error_message).
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from ccl_cache import media
from ccl_cache.errors import ConfigError, ManifestError, MediaError
from ccl_cache.experiments.synth import SynthConfig, generate
from ccl_cache.manifest import detect_format, expand_braces, load_manifest, parse_format, write_csv
from ccl_cache.testing import media_gen as mg
from ccl_cache.testing import sine, write_video
from ccl_cache_cli.main import cli

KEYS = ("audio/small_audio", "image/small_image")


def v2d_json(key: str, label: str | None = None, split: str | None = None, status: str = "success",
             **extra: Any) -> bytes:
    """The json video2dataset writes (the input's columns, then key/status/error_message/yt_meta_dict)."""
    meta: dict[str, Any] = {"url": f"https://www.youtube.com/watch?v={key}", "caption": f"caption of {key}", **extra}
    if label is not None:
        meta["label"] = label
    if split is not None:
        meta["split"] = split
    meta.update(key=key, status=status, error_message=None if status == "success" else "ERROR: unavailable",
                yt_meta_dict={})
    return json.dumps(meta, indent=4).encode()


def pack(shard: Path, samples: list[tuple[str, dict[str, bytes | Path]]]) -> Path:
    """Write ``samples`` ((key, {extension: bytes or file})) as one uncompressed tar, in order."""
    shard.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(shard, "w") as tf:
        for key, fields in samples:
            for ext, data in fields.items():
                payload = data.read_bytes() if isinstance(data, Path) else data
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(payload)
                tf.addfile(info, io.BytesIO(payload))
    return shard


@pytest.fixture(scope="module")
def mp4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1 s video with audio (its bytes stand for every sample of the manifest tests)."""
    return write_video(tmp_path_factory.mktemp("wds_video") / "v.mp4", num_frames=25, audio=sine(440, 1.0, 16000))


def sample(key: str, video: Path | None, label: str | None = "dog", split: str | None = None,
           status: str = "success", json_too: bool = True) -> tuple[str, dict[str, bytes | Path]]:
    fields: dict[str, bytes | Path] = {}
    if video is not None:
        fields["mp4"] = video
    if json_too:
        fields["json"] = v2d_json(key, label, split, status)
    fields["txt"] = f"caption of {key}".encode()
    return key, fields


# ------------------------------------------------------------------------------------ shard lists


def test_brace_expansion_follows_braceexpand() -> None:
    assert expand_braces("d/{00000..00002}.tar") == ["d/00000.tar", "d/00001.tar", "d/00002.tar"]
    assert expand_braces("{8..10}") == ["8", "9", "10"]  # no leading zero: no padding
    assert expand_braces("a{b,c}{1..2}") == ["ab1", "ab2", "ac1", "ac2"]
    assert expand_braces("{0..10..5}{x}") == ["0{x}", "5{x}", "10{x}"]  # a pair without comma/range is literal
    assert expand_braces("{a,{b,c}}") == ["a", "b", "c"]
    for bad in ("{0..3", "0..3}", "{0..5..0}"):
        with pytest.raises(ValueError):
            expand_braces(bad)


def test_manifest_from_pattern_folder_and_list(tmp_path: Path, mp4: Path) -> None:
    pack(tmp_path / "shards" / "00000.tar", [sample("000000000", mp4, "dog", "train"),
                                            sample("000000001", mp4, "cat", "test")])
    pack(tmp_path / "shards" / "00001.tar", [sample("000010000", mp4, "cat"),  # no split field: split=
                                            sample("000010001", mp4, 7, "val")])  # an integer label
    (tmp_path / "shards" / "00000.parquet").write_bytes(b"PAR1")  # video2dataset's other outputs
    (tmp_path / "shards" / "00000_stats.json").write_text("{}")
    pattern = str(tmp_path / "shards" / "{00000..00001}.tar")
    listing = tmp_path / "shards.txt"
    listing.write_text("# shards\nshards/00000.tar\n\nshards/0000{1..1}.tar\n")
    assert detect_format(pattern) == detect_format(tmp_path / "shards") == detect_format(listing) == "webdataset"
    assert detect_format(tmp_path / "shards" / "00000.tar") == "webdataset"
    m = load_manifest(pattern)
    assert [r.id for r in m.records] == ["000000000", "000000001", "000010000", "000010001"]
    assert [r.label for r in m.records] == ["dog", "cat", "cat", "7"]
    assert [r.split for r in m.records] == ["train", "test", "train", "val"]
    assert m.records[0].path == f"{tmp_path}/shards/00000.tar/000000000.mp4"
    assert m.classes == ("7", "cat", "dog")
    assert load_manifest(tmp_path / "shards").records == m.records
    assert load_manifest(listing).records == m.records
    test_split = load_manifest(pattern, format="webdataset:split=test")  # the split of json without one
    assert [r.split for r in test_split.records] == ["train", "test", "test", "val"]
    captions = load_manifest(pattern, format="webdataset:label_key=caption")
    assert captions.records[2].label == "caption of 000010000"
    write_csv(m, tmp_path / "as.csv")  # member paths survive a CSV round trip (relative, checked as files)
    assert "shards/00000.tar/000000000.mp4" in (tmp_path / "as.csv").read_text()
    assert load_manifest(tmp_path / "as.csv").records == m.records
    (tmp_path / "bad.csv").write_text("id,path,label\nx,shards/00000.tar/absent.mp4,dog\n")
    with pytest.raises(ManifestError, match="file not found"):
        load_manifest(tmp_path / "bad.csv")


def test_format_spec_is_checked(tmp_path: Path, mp4: Path) -> None:
    assert parse_format("webdataset:label_key=caption, split=test") == (
        "webdataset", {"label_key": "caption", "split": "test"})
    assert parse_format("vggsound:clip_window=true,window=5") == ("vggsound", {"clip_window": True, "window": 5.0})
    with pytest.raises(ConfigError, match="unknown option.*lable_key.*accepts: label_key"):
        parse_format("webdataset:lable_key=x")
    with pytest.raises(ConfigError, match="not KEY=VALUE"):
        parse_format("webdataset:caption")
    with pytest.raises(ConfigError, match="is a list"):
        parse_format("webdataset:classes=a")
    shard = pack(tmp_path / "a.tar", [sample("k", mp4)])
    with pytest.raises(ConfigError, match="given both"):
        load_manifest(shard, format="webdataset:split=test", split="val")
    result = CliRunner().invoke(cli, ["extract", str(shard), "--store", str(tmp_path / "s.zarr"),
                                      "--format", "webdataset:nope=1"])
    assert result.exit_code == 2 and "unknown option(s) nope" in result.output


def test_side_csv_gives_labels_and_splits(tmp_path: Path, mp4: Path) -> None:
    shard = pack(tmp_path / "00000.tar", [sample("a0", mp4, None), sample("a1", mp4, None)])
    labels = tmp_path / "labels.csv"
    labels.write_text("key,label,split\na0,dog,train\na1,cat,test\n")
    m = load_manifest(shard, format="webdataset", labels_csv=str(labels))
    assert [(r.id, r.label, r.split) for r in m.records] == [("a0", "dog", "train"), ("a1", "cat", "test")]
    by_url = tmp_path / "by_url.csv"
    by_url.write_text("url,label\nhttps://www.youtube.com/watch?v=a0,bird\nhttps://www.youtube.com/watch?v=a1,cow\n")
    m = load_manifest(shard, format=f"webdataset:labels_csv={by_url},csv_key=url,split=val")
    assert [(r.label, r.split) for r in m.records] == [("bird", "val"), ("cow", "val")]
    labels.write_text("key,label\na0,dog\n")
    with pytest.raises(ManifestError, match=r"00000.tar \(sample 'a1'\).*key='a1' is not in .*labels.csv"):
        load_manifest(shard, format="webdataset", labels_csv=str(labels))


def test_samples_without_json_or_video_are_named(tmp_path: Path, mp4: Path) -> None:
    shard = tmp_path / "00003.tar"
    pack(shard, [sample("ok", mp4), sample("nojson", mp4, json_too=False)])
    with pytest.raises(ManifestError, match=r"00003.tar \(sample 'nojson'\): no .json member, and the label is read "
                                            r"from its field 'label'; add the json sidecars or give labels_csv="):
        load_manifest(shard)
    pack(shard, [sample("ok", mp4), sample("novideo", None)])
    with pytest.raises(ManifestError, match=r"00003.tar \(sample 'novideo'\): no video member \(.mp4, .*\); it has: .json, .txt"):
        load_manifest(shard)
    pack(shard, [sample("ok", mp4), sample("nolabel", mp4, None)])
    with pytest.raises(ManifestError, match=r"'nolabel'\): its json has no class name in field 'label' \(fields: .*caption"):
        load_manifest(shard)
    # video2dataset writes the json of a failed download without a video: left out with a note
    pack(shard, [sample("ok", mp4), sample("gone", None, status="failed_to_download"), sample("nojson", mp4, json_too=False)])
    m = load_manifest(shard, skip_bad=True)
    assert [r.id for r in m.records] == ["ok"]
    reasons = " | ".join(reason for _, reason in m.skipped)
    assert "1 sample(s) without video left out" in reasons and "gone (failed_to_download)" in reasons
    assert "no .json member" in reasons


def test_damaged_shards_are_errors_naming_the_shard(tmp_path: Path, mp4: Path) -> None:
    good = pack(tmp_path / "00000.tar", [sample(f"k{i}", mp4) for i in range(3)])
    data = good.read_bytes()
    members = media.tar_index(good).members
    cut_mid = tmp_path / "00001.tar"  # cut inside the last video
    cut_mid.write_bytes(data[:members[6].offset + 100])
    with pytest.raises(ManifestError, match=r"00001.tar: tar shard is damaged: member 'k2.mp4' is cut short"):
        load_manifest(cut_mid)
    kept = load_manifest(cut_mid, skip_bad=True)
    assert [r.id for r in kept.records] == ["k0", "k1"]
    with pytest.raises(MediaError, match=r"00001.tar/k2.mp4: member 'k2.mp4' is not readable in tar shard .*00001.tar"):
        media.probe(f"{cut_mid}/k2.mp4")
    assert media.probe(f"{cut_mid}/k1.mp4").video is not None  # complete members still read
    cut_header = tmp_path / "00002.tar"  # cut at a header boundary: tarfile alone would call it complete
    cut_header.write_bytes(data[:members[5].offset + 512 * -(-members[5].size // 512)])
    with pytest.raises(ManifestError, match=r"00002.tar: tar shard is damaged: .*without the end-of-archive block: "
                                            r"it is truncated"):
        load_manifest(cut_header)
    gz = tmp_path / "00003.tar.gz"
    gz.write_bytes(__import__("gzip").compress(data))
    with pytest.raises(ManifestError, match=r"00003.tar.gz is a gzip-compressed tar.*gunzip"):
        load_manifest(gz)
    junk = tmp_path / "00004.tar"
    junk.write_bytes(b"not a tar" * 200)
    with pytest.raises(ManifestError, match=r"00004.tar is not a readable tar archive"):
        load_manifest(junk)
    with pytest.raises(ManifestError, match=r"tar shard .*00009.tar not found"):
        load_manifest(str(tmp_path / "{00000,00009}.tar"))


# ------------------------------------------------------------------------------------ media


def _same(a: Any, b: Any) -> bool:
    """Bitwise equality of reader results (paths aside)."""
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    if hasattr(a, "__dataclass_fields__"):
        return all(_same(getattr(a, f), getattr(b, f)) for f in a.__dataclass_fields__ if f != "path")
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return bool(a == b)


def _read_everything(path: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, read in (("probe", lambda: media.probe(path)), ("coverage", lambda: media.measure_coverage(path)),
                       ("audio", lambda: media.read_audio(path, sample_rate=16000)),
                       ("frames", lambda: media.read_frames(path, [0.0, 0.31, 0.7], size=(24, 32))),
                       ("keyframes", lambda: media.read_keyframes(path, [0.0, 0.5], size=(24, 32))),
                       ("clip", lambda: media.read_clip(path, 0.1, 4, 2, size=(24, 32)))):
        try:
            out[name] = read()
        except MediaError as exc:
            out[name] = ("error", exc.reason)
    return out


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_members_read_bitwise_like_the_unpacked_files(tmp_path: Path) -> None:
    names = ["two_audio_tracks", "rotated_90", "vfr", "nonzero_start", "mpeg4_avi", "no_audio", "gray",
             "truncated_faststart", "bitflip", "garbage", "audio_only"]
    files = {n: mg.make_case(n, tmp_path / "cases") for n in names}
    shard = tmp_path / "cases.tar"
    with tarfile.open(shard, "w") as tf:
        for path in files.values():
            tf.add(path, arcname=f"sub/{path.name}")
    for name, path in files.items():
        on_disk, in_tar = _read_everything(str(path)), _read_everything(f"{shard}/sub/{path.name}")
        for what in on_disk:
            assert _same(on_disk[what], in_tar[what]), (name, what)
    info = media.probe(f"{shard}/sub/{files['vfr'].name}")
    assert info.path == f"{shard}/sub/{files['vfr'].name}" and info.size_bytes == files["vfr"].stat().st_size
    with pytest.raises(MediaError, match=r"cases.tar/sub/absent.mp4: tar shard .*cases.tar has no member "
                                         r"'sub/absent.mp4' \(11 member\(s\), e.g. 'sub/"):
        media.read_frames(f"{shard}/sub/absent.mp4", [0.0])
    with pytest.raises(MediaError, match=r"garbage.mp4: is not a media file FFmpeg can open \(member "
                                         r"'sub/garbage.mp4' of tar shard .*cases.tar\)"):
        media.probe(f"{shard}/sub/garbage.mp4")
    real = tmp_path / "dir.tar"  # a real file is read as itself, even under a .tar-named folder
    real.mkdir()
    shutil.copy(files["vfr"], real / "v.mp4")
    assert media.probe(real / "v.mp4").size_bytes == files["vfr"].stat().st_size
    assert not media.is_member_path(real / "v.mp4") and media.is_member_path(f"{shard}/sub/x.mp4")


# ------------------------------------------------------------------------------------ end to end


@pytest.mark.slow  # in the full run, not the quick loop (see README)
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_extract_distill_retrieve_over_two_shards(tmp_path: Path) -> None:
    """Extraction from shards equals extraction from the unpacked files (bitwise, float32, 1 decode
    worker); a student trains on it (a DataLoader worker reads the members), a member is a query,
    a teacher trains on the shards and cache-clips decodes them."""
    from fixtures_distill import tiny_config

    from ccl_cache.search import IndexConfig, index_store
    from ccl_cache.store import open_store
    from ccl_cache.testing.extraction import save_small_teachers, small_extract_args
    from ccl_cache.train import train

    disk = generate(tmp_path / "synth", SynthConfig(classes=2, clips_per_class=4, duration=1.0, size=32,
                                                    pretrain_clips_per_class=0, no_audio=0.25, test_fraction=0.25,
                                                    val_fraction=0.0, seed=11), workers=1)
    records = disk.records
    shards = []
    for s, part in enumerate((records[:4], records[4:])):
        samples = [(r.id, {"mp4": Path(r.path), "json": v2d_json(r.id, r.label, r.split), "txt": b"x"}) for r in part]
        if s == 1:  # a download that failed: video2dataset still writes its json
            samples.insert(1, ("failed0", {"json": v2d_json("failed0", status="failed_to_download"), "txt": b"x"}))
        shards.append(pack(tmp_path / "shards" / f"{s:05d}.tar", samples))
    args = small_extract_args(*save_small_teachers(tmp_path, 3, 4), frames_per_clip=2, batch_size=3)
    runner = CliRunner()
    pattern = str(tmp_path / "shards" / "{00000..00001}.tar")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for manifest, store, fmt in ((pattern, "wds.zarr", "webdataset"),
                                     (str(tmp_path / "synth" / "manifest.csv"), "disk.zarr", "csv")):
            result = runner.invoke(cli, ["extract", manifest, "--store", str(tmp_path / store), "--format", fmt, *args])
            assert result.exit_code == 0, result.output
    with open_store(tmp_path / "wds.zarr") as wds, open_store(tmp_path / "disk.zarr") as ref:
        assert list(wds.clips.id) == [r.id for r in records]
        assert str(wds.clips.path[4]) == f"{shards[1]}/{records[4].id}.mp4"
        np.testing.assert_array_equal(wds.clips.has_audio, ref.clips.has_audio)
        np.testing.assert_array_equal(wds.clips.duration, ref.clips.duration)
        for key in KEYS:
            for a, b in zip(wds.load_teacher(key), ref.load_teacher(key)):  # embedding, times, mask
                assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), key

    run = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train(tiny_config(tmp_path / "wds.zarr", run, workers=1, test_max_windows=1))
        with open_store(tmp_path / "wds.zarr", "r") as store:
            index_store(store, tmp_path / "index", IndexConfig(device="cpu"), run="run", split="train")
    query = next(r for r in records if r.split == "test")
    member = f"{shards[records.index(query) // 4]}/{query.id}.mp4"
    result = runner.invoke(cli, ["retrieve", "--index", str(tmp_path / "index"), "-q", member, "--k", "2", "--json"])
    assert result.exit_code == 0, result.output
    (found,) = json.loads(result.stdout)["queries"]
    assert found["kind"] == "video" and found["class"] == query.label and len(found["hits"]) == 2

    result = runner.invoke(cli, ["teach", pattern, "--format", "webdataset", "--modality", "audio", "--arch",
                                 "small_audio", "--out", str(tmp_path / "teacher.pt"), "--epochs", "1", "--batch-size",
                                 "2", "--device", "cpu", "--quiet", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["failures"] == []
    result = runner.invoke(cli, ["cache-clips", str(tmp_path / "wds.zarr"), "--workers", "1", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["cached"] == len(records) and json.loads(result.stdout)["failed"] == {}
