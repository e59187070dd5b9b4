"""`ccl-cache gaps`: scoring methods on numpy-made stores, cross-fitting, label-free isolation, the
store array, the command, and `--exclude-gaps` in distill and index."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from ccl_cache.errors import ConfigError
from ccl_cache.gaps import METHODS, GapConfig, average_precision, precision_at_n, score_gaps, truth_mask
from ccl_cache.gaps.data import GapData
from ccl_cache.gaps.evaluate import evaluate_ranking, random_average_precision
from ccl_cache.gaps.models import fold_ids
from ccl_cache.manifest import ClipRecord, Manifest
from ccl_cache.store import create_store, open_store
from ccl_cache.store.curation import gap_excluded, read_gap_score
from ccl_cache.store.schema import GAP_SCORE_PATH
from ccl_cache_cli.main import cli, main

CLASSES, DIM, FRAMES = 4, 6, 2
PRETRAIN, STUDENT = 12, 24  # clips per class
GAP_EVERY = 6  # every 6th student clip carries another class's sound
SPLITS = ("train", "train", "train", "val", "test", "train")


def _design(seed: int = 0) -> dict[str, np.ndarray]:
    """Clip rows: pretrain clips first (clean), then student clips; sound and picture share the class
    except the gap clips, whose sound is the next class's. Class means are far apart, noise small."""
    rng = np.random.default_rng(seed)
    audio_means, image_means = rng.normal(0, 3, (CLASSES, DIM)), rng.normal(0, 3, (CLASSES, DIM))
    labels = np.concatenate([np.repeat(np.arange(CLASSES), PRETRAIN), np.tile(np.arange(CLASSES), STUDENT)])
    split = np.array(["pretrain"] * (CLASSES * PRETRAIN)
                     + [SPLITS[i % len(SPLITS)] for i in range(CLASSES * STUDENT)], dtype=object)
    student = np.flatnonzero(split != "pretrain")
    gap = np.zeros(len(labels), bool)
    gap[student[::GAP_EVERY]] = True
    sound = np.where(gap, (labels + 1) % CLASSES, labels)
    audio = audio_means[sound] + rng.normal(0, 0.5, (len(labels), DIM))
    image = image_means[labels][:, None, :] + rng.normal(0, 0.5, (len(labels), FRAMES, DIM))
    return {"labels": labels, "split": split, "gap": gap, "audio": audio, "image": image}


def build_store(path: Path, seed: int = 0, teachers: bool = True, media: str = "/v") -> dict[str, np.ndarray]:
    d = _design(seed)
    n = len(d["labels"])
    records = [ClipRecord(id=f"c{i:03d}", path=f"{media}/{i}.mp4", label=f"k{d['labels'][i]}", split=str(d["split"][i]))
               for i in range(n)]
    with create_store(path, Manifest.from_records(records), chunk_rows=32) as s:
        if teachers:
            s.create_teacher("audio/a", DIM, None, dtype="float32", fingerprint={"arch": "a"})
            s.write_rows("audio/a", slice(0, n), d["audio"], None, np.ones(n, bool))
            s.create_teacher("image/i", DIM, FRAMES, dtype="float32", fingerprint={"arch": "i"})
            s.write_rows("image/i", slice(0, n), d["image"], None, np.ones((n, FRAMES), bool))
    return d


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gaps") / "s.zarr"
    build_store(path)
    return path


def _truth(result: object, design: dict[str, np.ndarray]) -> np.ndarray:
    return design["gap"][result.rows]  # type: ignore[attr-defined]


FAST = GapConfig(folds=3)


@pytest.mark.parametrize("label_free", [False, True], ids=["labels", "label-free"])
@pytest.mark.parametrize("method", METHODS.names())
def test_each_method_scores_every_student_clip(store_path: Path, method: str, label_free: bool) -> None:
    result = score_gaps(store_path, replace(FAST, method=method, label_free=label_free))
    design = _design()
    assert result.rows.tolist() == np.flatnonzero(design["split"] != "pretrain").tolist()
    assert np.isfinite(result.scores).all() and len(result.ids) == len(result.rows)
    ap = average_precision(result.scores, _truth(result, design))
    # One modality alone cannot tell a clean sound of another class from its own without the label
    # (the picture, never): near the gap rate. Both modalities (or the sound and the label) can.
    blind = method == "image" or (method == "audio" and label_free)
    assert (ap < 0.6) if blind else (ap > 0.9), (method, label_free, ap)
    # Each modality's best guess: the image names the label, the audio the sound's class.
    assert sum(g == lab for g, lab in zip(result.image_guess, result.labels)) >= 0.9 * len(result.rows)
    sound_names = [f"k{(lab + 1) % CLASSES if gap else lab}" for lab, gap in
                   zip(design["labels"][result.rows], design["gap"][result.rows])]
    assert sum(g == s for g, s in zip(result.audio_guess, sound_names)) >= 0.9 * len(result.rows)


def test_default_method_finds_every_gap_first(store_path: Path) -> None:
    for label_free in (False, True):
        result = score_gaps(store_path, GapConfig(label_free=label_free))
        truth = _truth(result, _design())
        assert precision_at_n(result.scores, truth) == 1.0 and average_precision(result.scores, truth) == 1.0


def _data(label_free: bool, seed: int = 0, **changes: object) -> GapData:
    d = _design(seed)
    ref, scored = d["split"] == "pretrain", d["split"] != "pretrain"
    config = replace(FAST, label_free=label_free, **changes)
    image = d["image"].mean(axis=1)
    return GapData(d["audio"][scored], image[scored], None if label_free else d["labels"][scored],
                   d["audio"][ref], image[ref], d["labels"][ref], CLASSES,
                   fold_ids(int(scored.sum()), config.folds, config.seed), config)


@pytest.mark.parametrize("method", METHODS.names())
@pytest.mark.parametrize("trim", [0.0, 0.3])
def test_cross_fitting_never_lets_a_clip_score_itself(method: str, trim: float) -> None:
    """A clip is scored by models fitted without its fold: changing every *other* clip of its fold
    (their sounds and labels) leaves its score as it was; changing clips of another fold does not."""
    base = _data(False, trim=trim)
    scores = METHODS.get(method)(base)
    rng = np.random.default_rng(5)
    k = 0
    mine = np.flatnonzero(base.folds == k)
    watched, mates = mine[0], mine[1:]
    changed = _data(False, trim=trim)
    changed.audio[mates] = rng.normal(0, 5, changed.audio[mates].shape)
    changed.image[mates] = rng.normal(0, 5, changed.image[mates].shape)
    changed.labels[mates] = rng.integers(0, CLASSES, len(mates))
    again = METHODS.get(method)(changed)
    if method == "combined":  # a rank over all clips: compare the parts, which are cross-fitted
        for part in ("likelihood", "crossmodal"):
            assert changed.cache[("fitted", part)][watched] == pytest.approx(base.cache[("fitted", part)][watched])
    else:
        assert again[watched] == pytest.approx(scores[watched])
    other = _data(False, trim=trim)
    elsewhere = np.flatnonzero(other.folds != k)
    other.audio[elsewhere] = rng.normal(0, 5, other.audio[elsewhere].shape)
    other.image[elsewhere] = rng.normal(0, 5, other.image[elsewhere].shape)
    moved = METHODS.get(method)(other)
    assert not np.allclose(moved[mine], scores[mine])  # the test can see a leak: other folds do count


@pytest.mark.parametrize("method", METHODS.names())
def test_label_free_never_reads_the_scored_labels(tmp_path: Path, method: str) -> None:
    """Scrambling the scored clips' labels in the store leaves label-free scores identical (the
    pretrain clips' labels may be used: they are the teachers' own curated clips)."""
    path = tmp_path / "a.zarr"
    build_store(path)
    before = score_gaps(path, replace(FAST, method=method, label_free=True))
    scrambled = tmp_path / "b.zarr"
    d = _design()
    n = len(d["labels"])
    rng = np.random.default_rng(1)
    shuffled = d["labels"].copy()
    student = np.flatnonzero(d["split"] != "pretrain")
    shuffled[student] = rng.permutation(shuffled[student])
    records = [ClipRecord(id=f"c{i:03d}", path=f"/v/{i}.mp4", label=f"k{shuffled[i]}", split=str(d["split"][i]))
               for i in range(n)]
    with create_store(scrambled, Manifest.from_records(records), chunk_rows=32) as s:
        s.create_teacher("audio/a", DIM, None, dtype="float32", fingerprint={"arch": "a"})
        s.write_rows("audio/a", slice(0, n), d["audio"], None, np.ones(n, bool))
        s.create_teacher("image/i", DIM, FRAMES, dtype="float32", fingerprint={"arch": "i"})
        s.write_rows("image/i", slice(0, n), d["image"], None, np.ones((n, FRAMES), bool))
    after = score_gaps(scrambled, replace(FAST, method=method, label_free=True))
    np.testing.assert_array_equal(after.scores, before.scores)
    with_labels = score_gaps(scrambled, replace(FAST, method=method))
    assert not np.allclose(with_labels.scores, before.scores)  # with labels they do count


def test_label_free_data_holds_no_scored_labels(store_path: Path) -> None:
    from ccl_cache.gaps.data import load_data

    with open_store(store_path) as s:
        data, rows, _ = load_data(s, {"audio": "audio/a", "image": "image/i"}, replace(FAST, label_free=True))
    assert data.labels is None and len(rows) == data.n and data.ref_labels is not None


def test_scores_are_written_to_and_read_from_the_store(tmp_path: Path) -> None:
    path = tmp_path / "s.h5"
    design = build_store(path)
    result = score_gaps(path, FAST)
    from ccl_cache.gaps import save_to_store

    config_file = save_to_store(result)
    assert config_file == tmp_path / "s.h5.gaps.yaml" and "method: likelihood" in config_file.read_text()
    with open_store(path) as s:
        scores, attrs = read_gap_score(s)
        assert scores.dtype == np.float32 and scores.shape == (s.n,)
        assert np.isnan(scores[design["split"] == "pretrain"]).all()  # pretrain clips are not scored
        np.testing.assert_allclose(scores[result.rows], result.scores, rtol=1e-6)
        assert attrs["method"] == "likelihood" and attrs["teachers"] == {"audio": "audio/a", "image": "image/i"}
        assert attrs["config"]["folds"] == 3 and attrs["scored"] == len(result.rows) and "created" in attrs
        high = gap_excluded(s, np.arange(s.n), float(np.nanmedian(scores)))
        assert high.sum() == np.sum(scores > np.nanmedian(scores))  # NaN (pretrain) kept
    with open_store(path, "r+") as s:  # a write killed before its attributes: refused, not read
        s.create_array(GAP_SCORE_PATH, (s.n,), "float32", overwrite=True)
    with open_store(path) as s, pytest.raises(ConfigError, match="not written to the end"):
        read_gap_score(s)


def test_no_gap_score_and_bad_threshold_are_clear(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    build_store(path)
    with open_store(path) as s:
        with pytest.raises(ConfigError, match=r"ccl-cache gaps .*s\.zarr"):
            read_gap_score(s)
        with pytest.raises(ConfigError, match="finite"):
            gap_excluded(s, np.arange(3), math.nan)


def test_bad_inputs_give_clear_errors(tmp_path: Path) -> None:
    bare = tmp_path / "bare.zarr"
    build_store(bare, teachers=False)
    with pytest.raises(ConfigError, match="no teachers yet"):
        score_gaps(bare, FAST)
    with pytest.raises(ConfigError, match="unknown gap method 'nope'"):
        score_gaps(bare, replace(FAST, method="nope"))
    with pytest.raises(ConfigError, match="one audio and one image"):
        score_gaps(bare, replace(FAST, teachers=("audio",)))
    with pytest.raises(ConfigError, match="folds=1"):
        GapConfig(folds=1).validate()
    with pytest.raises(ConfigError, match="pretrain"):
        GapConfig(splits=("pretrain",)).validate()
    path = tmp_path / "s.zarr"
    build_store(path)
    with pytest.raises(ConfigError, match="no clips in split"):
        score_gaps(path, replace(FAST, splits=("holdout",)))
    with pytest.raises(ConfigError, match="pretrain"):  # label-free probes need the pretrain labels
        score_gaps(path, replace(FAST, label_free=True, use_pretrain=False, method="likelihood"))
    # Without pretrain clips the cross-modal maps still work label-free: they read no label at all.
    result = score_gaps(path, replace(FAST, label_free=True, use_pretrain=False, method="crossmodal"))
    assert set(result.audio_guess) == {""} and np.isfinite(result.scores).all()


def test_evaluation_measures() -> None:
    truth = np.array([True, False, True, False, False])
    assert average_precision([5, 4, 3, 2, 1], truth) == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert precision_at_n([5, 4, 3, 2, 1], truth) == 0.5
    assert average_precision([9, 0, 8, 1, 2], truth) == 1.0
    assert 0.3 < random_average_precision(truth) < 0.7
    summary = evaluate_ranking([9, 0, 8, 1, 2], truth)
    assert summary["gap_clips"] == 2 and summary["clips"] == 5 and summary["p_at_n"] == 1.0
    with pytest.raises(ConfigError, match="NaN"):
        average_precision([1, math.nan], [True, False])
    with pytest.raises(ConfigError, match="ground truth"):
        truth_mask({"clips": [{"id": "a", "gap": True}]}, ["a", "b"])
    assert truth_mask({"clips": [{"id": "a", "gap": True}, {"id": "b", "gap": False}]}, ["b", "a"]).tolist() == [False, True]


def test_cli_end_to_end(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    design = build_store(path)
    out = tmp_path / "out" / "gaps.csv"
    result = CliRunner().invoke(cli, ["gaps", str(path), "--folds", "3", "--top", "5", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stdout == "" and "by gap score" in result.stderr and "curation/gap_score" in result.stderr
    lines = out.read_text().splitlines()
    assert lines[0] == "rank,id,path,start,end,split,label,score,audio_guess,image_guess" and len(lines) == 6
    top_ids = [line.split(",")[1] for line in lines[1:]]
    gap_ids = {f"c{i:03d}" for i in np.flatnonzero(design["gap"])}
    assert set(top_ids) <= gap_ids  # the five highest scores are gap clips
    assert (tmp_path / "out" / "gaps.gaps.yaml").is_file() and (tmp_path / "s.zarr.gaps.yaml").is_file()
    with open_store(path) as s:
        assert np.isfinite(read_gap_score(s)[0]).sum() == CLASSES * STUDENT
    json_out = tmp_path / "g.json"
    result = CliRunner().invoke(cli, ["gaps", str(path), "--folds", "3", "--label-free", "--method", "crossmodal",
                                      "--no-store", "--json", "--out", str(json_out)])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["config"]["label_free"] is True and summary["store_array"] is None
    assert len(summary["clips"]) == CLASSES * STUDENT and summary["clips"][0]["rank"] == 1
    assert json.loads(json_out.read_text())["config"]["method"] == "crossmodal"
    with open_store(path) as s:  # --no-store kept the first run's scores
        assert read_gap_score(s)[1]["method"] == "likelihood"


def test_html_page_plays_the_ranked_clips(tmp_path: Path) -> None:
    """gaps --html: one tile per ranked clip in score order, each a player of its file (linked
    relative to the page) with label, score and both guesses; a clip whose file is gone
    is named, not a broken player (test_report_browser.py plays such pages in Chromium)."""
    from html.parser import HTMLParser
    from urllib.parse import unquote, urlsplit

    from ccl_cache.testing.media_gen import write_video

    media = tmp_path / "media"
    path = tmp_path / "s.zarr"
    build_store(path, media=str(media))
    ranked = score_gaps(path, GapConfig(folds=3)).ranked(4)
    for row in ranked[:3]:  # the fourth clip's file is missing
        write_video(row["path"], num_frames=4, audio=np.zeros(8000, np.float32))
    page = tmp_path / "site" / "gaps.html"
    result = CliRunner().invoke(cli, ["gaps", str(path), "--folds", "3", "--top", "4", "--html", str(page), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["html"] == str(page)

    class Page(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.sources: list[str] = []

        def handle_starttag(self, tag: str, attrs: list) -> None:
            if tag in ("video", "audio"):
                self.sources.append(dict(attrs)["src"])

    text = page.read_text(encoding="utf-8")
    parsed = Page()
    parsed.feed(text)
    assert [(page.parent / unquote(urlsplit(s).path)).resolve() for s in parsed.sources] == \
        [Path(r["path"]).resolve() for r in ranked[:3]]
    assert not any(s.startswith("/") for s in parsed.sources)
    tiles = [text.index(f"#{r['rank']} {r['id']} ({r['split']})") for r in ranked]
    assert tiles == sorted(tiles) and text.count('class="tile result') == len(ranked)  # rank order, one tile each
    for row in ranked:
        assert f"audio guess: {row['audio_guess']}" in text and f"image guess: {row['image_guess']}" in text
    assert "not found" in text
    result = CliRunner().invoke(cli, ["gaps", str(path), "--html", str(tmp_path / "gaps.png")])
    assert isinstance(result.exception, ConfigError) and "ending in .html" in str(result.exception)


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bare = tmp_path / "bare.zarr"
    build_store(bare, teachers=False)
    with pytest.raises(SystemExit) as exit_info:
        main(["gaps", str(bare)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("error:") and "no teachers" in err and len(err.splitlines()) == 1
    result = CliRunner().invoke(cli, ["gaps", str(bare), "--method", "nope"])
    assert result.exit_code == 2 and "nope" in result.output  # click's choice check
    result = CliRunner().invoke(cli, ["gaps", str(bare), "--out", str(tmp_path / "x.txt")])
    assert isinstance(result.exception, ConfigError)


def test_distill_exclude_gaps_removes_training_rows(tmp_path: Path) -> None:
    from ccl_cache.data.splits import make_splits
    from ccl_cache.train import TrainConfig

    path = tmp_path / "s.zarr"
    design = build_store(path)
    teachers = {"audio": "audio/a", "image": "image/i"}
    with open_store(path) as s:
        with pytest.raises(ConfigError, match="ccl-cache gaps"):
            make_splits(s, teachers, exclude_gaps=1.0)
        plain = make_splits(s, teachers)
    from ccl_cache.gaps import save_to_store

    result = score_gaps(path, FAST)
    save_to_store(result)
    scores = result.full_scores()
    threshold = float(np.sort(result.scores)[-len(result.rows) // 8])  # about the top eighth above it
    with open_store(path) as s:
        cut = make_splits(s, teachers, exclude_gaps=threshold)
    dropped = np.setdiff1d(plain.train, cut.train)
    assert len(dropped) > 0 and (scores[dropped] > threshold).all() and (scores[cut.train] <= threshold).all()
    assert cut.excluded == {f"train clips with gap score > {threshold:g}": len(dropped)}
    np.testing.assert_array_equal(cut.val, plain.val)  # validation and test clips stay
    np.testing.assert_array_equal(cut.test, plain.test)
    assert design["gap"][dropped].mean() > 0.9
    with pytest.raises(ConfigError, match="exclude_gaps=nan"):
        TrainConfig(store=str(path), exclude_gaps=math.nan).validate()
    result = CliRunner().invoke(cli, ["distill", str(path), "--out", str(tmp_path / "run"), "--exclude-gaps", "nan",
                                      "--dry-run"])
    assert isinstance(result.exception, ConfigError) and "exclude_gaps=nan" in str(result.exception)


def test_index_exclude_gaps_removes_gallery_rows(tmp_path: Path) -> None:
    from ccl_cache.gaps import save_to_store

    path = tmp_path / "s.zarr"
    build_store(path)
    result = CliRunner().invoke(cli, ["index", str(path), "--teacher", "audio/a", "--split", "all", "--out",
                                      str(tmp_path / "i0"), "--exclude-gaps", "1"])
    assert isinstance(result.exception, ConfigError) and "ccl-cache gaps" in str(result.exception)
    gaps = score_gaps(path, FAST)
    save_to_store(gaps)
    threshold = float(np.median(gaps.scores))
    result = CliRunner().invoke(cli, ["index", str(path), "--teacher", "audio/a", "--split", "all", "--out",
                                      str(tmp_path / "i1"), "--exclude-gaps", str(threshold), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    above = int((gaps.scores > threshold).sum())
    n = CLASSES * (PRETRAIN + STUDENT)
    assert info["vectors"] == n - above and info["excluded"][f"gap score > {threshold:g}"] == above
    from ccl_cache.search import load_index

    kept = set(np.asarray(load_index(tmp_path / "i1").meta.rows).tolist())
    assert len(kept) == n - above
    high = set(gaps.rows[gaps.scores > threshold].tolist())
    assert not kept & high
    result = CliRunner().invoke(cli, ["index", str(path), "--teacher", "audio/a", "--out", str(tmp_path / "i2"),
                                      "--exclude-gaps", "nan"])
    assert isinstance(result.exception, ConfigError) and "finite" in str(result.exception)


def test_a_distill_run_trains_without_the_clips_above_the_threshold(tmp_path: Path) -> None:
    """End to end on a tiny real store: `distill --exclude-gaps` reports the left-out clips and
    trains on the rest (config.yaml keeps the threshold)."""
    import yaml
    from fixtures_distill import make_store, tiny_config

    from ccl_cache.gaps import save_to_store
    from ccl_cache.train import train

    store = make_store(tmp_path)  # no pretrain clips: scored with labels, models fitted on the folds
    gaps = score_gaps(store, GapConfig(folds=2, trim=0.0))  # 18 clips: no fold may lose a class
    save_to_store(gaps)
    train_rows = np.array([s == "train" for s in gaps.splits])
    assert np.isfinite(gaps.scores).all()
    threshold = float(np.median(gaps.scores[train_rows]))
    above = int((gaps.scores[train_rows] > threshold).sum())
    plain = train(tiny_config(store, tmp_path / "all", method="baseline", write_embeddings=False))
    cut = train(tiny_config(store, tmp_path / "cut", method="baseline", write_embeddings=False,
                            exclude_gaps=threshold))
    assert above > 0 and cut["data"]["train"] == plain["data"]["train"] - above
    assert cut["data"]["excluded"][f"train clips with gap score > {threshold:g}"] == above
    assert cut["data"]["test"] == plain["data"]["test"]
    saved = yaml.safe_load((tmp_path / "cut" / "config.yaml").read_text())
    assert saved["exclude_gaps"] == pytest.approx(threshold)


def _motion_store(path: Path, seed: int = 0) -> np.ndarray:
    """Classes in appearance pairs {2k, 2k+1}: one still object and one moving one of the same look,
    so their frames share a mean and differ only in how much they change over the clip. Each class
    has its own sound; every 4th student clip carries the sound of its picture's partner class,
    a gap that the frames' mean and the sound alone cannot show. Returns the gap mask of the rows."""
    rng = np.random.default_rng(seed)
    classes, dim, frames = 4, 6, 4
    looks, sounds = rng.normal(0, 3, (classes // 2, dim)), rng.normal(0, 3, (classes, dim))
    labels = np.concatenate([np.repeat(np.arange(classes), PRETRAIN), np.tile(np.arange(classes), STUDENT)])
    split = np.array(["pretrain"] * (classes * PRETRAIN) + ["train"] * (classes * STUDENT), dtype=object)
    gap = np.zeros(len(labels), bool)
    gap[np.flatnonzero(split != "pretrain")[::4]] = True
    heard = np.where(gap, labels ^ 1, labels)
    audio = sounds[heard] + rng.normal(0, 0.5, (len(labels), dim))
    motion = np.where(labels % 2 == 1, 2.0, 0.1)[:, None, None]  # how far the frames wander
    image = looks[labels // 2][:, None, :] + motion * rng.normal(0, 1, (len(labels), frames, dim))
    records = [ClipRecord(id=f"c{i:03d}", path=f"/v/{i}.mp4", label=f"k{labels[i]}", split=str(split[i]))
               for i in range(len(labels))]
    with create_store(path, Manifest.from_records(records), chunk_rows=32) as s:
        s.create_teacher("audio/a", dim, None, dtype="float32", fingerprint={"arch": "a"})
        s.write_rows("audio/a", slice(0, len(labels)), audio, None, np.ones(len(labels), bool))
        s.create_teacher("image/i", dim, frames, dtype="float32", fingerprint={"arch": "i"})
        s.write_rows("image/i", slice(0, len(labels)), image, None, np.ones((len(labels), frames), bool))
    return gap


@pytest.mark.parametrize("method", ["likelihood", "crossmodal"])
def test_frame_spread_tells_apart_classes_of_one_appearance(tmp_path: Path, method: str) -> None:
    gap = _motion_store(tmp_path / "m.zarr")
    aps = {}
    for spread in (False, True):
        result = score_gaps(tmp_path / "m.zarr", replace(FAST, method=method, label_free=True, frame_spread=spread))
        aps[spread] = average_precision(result.scores, gap[result.rows])
    # The mean frame of a still and a moving object of one look is the same: the partner's sound fits
    # the picture. The frames' spread tells the two classes apart, and the gap clips come first.
    assert aps[True] >= 0.9, aps
    assert aps[False] <= 0.6, aps


def test_teacher_vectors_spread_is_the_valid_frames_deviation(tmp_path: Path) -> None:
    from ccl_cache.store.vectors import teacher_vectors

    build_store(tmp_path / "s.zarr")
    with open_store(tmp_path / "s.zarr", "r+") as s:
        mask = np.ones((s.n, FRAMES), bool)
        mask[0, 1:] = False  # one valid frame: no spread
        emb, _, _ = s.read_rows("image/i", np.arange(s.n))
        s.write_rows("image/i", slice(0, s.n), np.asarray(emb), None, mask)
        rows = np.arange(4)
        plain, _, _ = teacher_vectors(s, "image/i", rows)
        both, _, _ = teacher_vectors(s, "image/i", rows, spread=True)
        frames = np.asarray(s.read_rows("image/i", rows)[0], np.float64)
        audio, _, _ = teacher_vectors(s, "audio/a", rows, spread=True)  # a clip-level teacher: unchanged
    assert both.shape == (4, 2 * DIM)
    np.testing.assert_allclose(both[:, :DIM], plain, rtol=1e-6)
    assert (both[0, DIM:] == 0).all()
    np.testing.assert_allclose(both[1:, DIM:], frames[1:].std(axis=1), rtol=1e-5, atol=1e-6)
    assert audio.shape == (4, DIM)
