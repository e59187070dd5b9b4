"""`ccl-cache retrieve`: video files, clip ids and audio files against a trained run's index."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from ccl_cache import media
from ccl_cache.errors import ConfigError, MediaError, TeacherError
from ccl_cache.search.gallery import index_store
from ccl_cache.search.retrieve import RetrieveConfig, embed_audio, load_audio_teacher, retrieve
from ccl_cache.store import open_store
from ccl_cache.testing import write_audio
from ccl_cache_cli.main import cli, main


def _clips(pipeline, split: str) -> list[tuple[int, str, str]]:
    """(row, clip id, path) of the store's clips in ``split``."""
    with open_store(pipeline.store) as store:
        c = store.clips
        return [(i, str(c.id[i]), str(c.path[i])) for i in range(store.n) if str(c.split[i]) == split]


def _with_audio(pipeline, split: str) -> tuple[int, str, str]:
    """A clip of ``split`` whose audio the teacher embedded (mask True)."""
    with open_store(pipeline.store) as store:
        mask = np.asarray(store.teacher("audio/small_audio").mask[:], dtype=bool)
    return next(c for c in _clips(pipeline, split) if mask[c[0]])


def _wav_of(path: str, out: Path) -> Path:
    """The sound of a video file as a 16 kHz PCM .wav."""
    return write_audio(out, media.read_audio(path, sample_rate=16000), sample_rate=16000, codec="pcm_s16le",
                       container_format="wav")


def test_gallery_video_finds_itself_first(pipeline) -> None:
    row, clip_id, path = _clips(pipeline, "train")[3]
    res = retrieve(RetrieveConfig(index=str(pipeline.index), queries=(path,), k=5))
    (r,) = res.results
    assert r.query.kind == "video" and r.windows >= 1
    assert r.hits[0].clip_id == clip_id and r.hits[0].row == row
    # The query is embedded exactly as the store's gallery embedding: cosine 1.
    assert r.hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert [h.rank for h in r.hits] == [1, 2, 3, 4, 5]
    assert all(a.score >= b.score for a, b in zip(r.hits, r.hits[1:]))
    assert r.class_name == pipeline.classes[r.hits[0].label]  # the store knows the file's class
    assert res.source == f"student:{pipeline.run}"


def test_clip_id_uses_stored_embedding(pipeline) -> None:
    row, clip_id, _ = _clips(pipeline, "train")[0]
    (r,) = retrieve(RetrieveConfig(index=str(pipeline.index), queries=(clip_id,), k=3)).results
    assert r.query.kind == "clip" and r.windows == 0
    assert r.hits[0].clip_id == clip_id and r.hits[0].score == pytest.approx(1.0, abs=1e-5)


def test_audio_teacher_rebuilt_reproduces_store(pipeline, tmp_path: Path) -> None:
    row, _, path = _with_audio(pipeline, "train")
    with open_store(pipeline.store) as store:
        key = "audio/small_audio"
        import torch

        teacher = load_audio_teacher(store, key, None, torch.device("cpu"))  # weights from the extract config
        stored = store.read_rows(key, np.array([row]))[0][0]
        got = embed_audio(str(_wav_of(path, tmp_path / "q.wav")), teacher, key, store.teacher(key).fingerprint)
    assert got.shape == stored.shape
    np.testing.assert_allclose(got, stored, rtol=2e-2, atol=2e-2)  # the store keeps float16
    assert np.dot(got, stored) / (np.linalg.norm(got) * np.linalg.norm(stored)) > 0.999


def test_audio_query_cross_modal_and_teacher_index(pipeline, tmp_path: Path) -> None:
    row, clip_id, path = _with_audio(pipeline, "train")
    wav = _wav_of(path, tmp_path / "sound.wav")
    res = retrieve(RetrieveConfig(index=str(pipeline.index), queries=(str(wav),), k=4))
    (r,) = res.results
    assert r.query.kind == "audio" and len(r.hits) == 4
    assert all(np.isfinite(h.score) and -1.0 <= h.score <= 1.0 for h in r.hits)
    assert any("cross-modal" in n for n in res.notes)
    assert not any("not meaningful" in n for n in res.notes)  # a CCL run: aligned with the teacher
    # Against an index of the audio teacher itself, the sound finds its own clip first.
    with open_store(pipeline.store) as store:
        index_store(store, tmp_path / "audio_index", teacher="audio/small_audio", split="train")
    (t,) = retrieve(RetrieveConfig(index=str(tmp_path / "audio_index"), queries=(str(wav),), k=3)).results
    assert t.hits[0].clip_id == clip_id and t.hits[0].score == pytest.approx(1.0, abs=2e-3)
    # --modality audio reads the sound of a video file.
    (v,) = retrieve(RetrieveConfig(index=str(tmp_path / "audio_index"), queries=(path,), k=1, modality="audio")).results
    assert v.query.kind == "audio" and v.hits[0].clip_id == clip_id


def test_audio_weights_are_checked(pipeline, tmp_path: Path) -> None:
    _, _, path = _with_audio(pipeline, "train")
    with pytest.raises(TeacherError, match="SHA-256 differs"):
        retrieve(RetrieveConfig(index=str(pipeline.index), queries=(path,), modality="audio",
                                audio_weights=str(pipeline.image_weights)))
    with pytest.raises(ConfigError, match="gone.pt .given. is missing.*--audio-weights"):
        retrieve(RetrieveConfig(index=str(pipeline.index), queries=(path,), modality="audio",
                                audio_weights=str(tmp_path / "gone.pt")))


def test_several_queries_keep_their_order(pipeline, tmp_path: Path) -> None:
    test_row, _, test_path = _clips(pipeline, "test")[0]
    _, train_id, _ = _clips(pipeline, "train")[1]
    wav = _wav_of(_with_audio(pipeline, "test")[2], tmp_path / "t.wav")
    res = retrieve(RetrieveConfig(index=str(pipeline.index), queries=(test_path, train_id, str(wav)), k=2))
    assert [r.query.kind for r in res.results] == ["video", "clip", "audio"]
    assert res.results[1].hits[0].clip_id == train_id
    # A test clip is not in the train gallery: its top hit is another clip.
    assert test_row not in [h.row for h in res.results[0].hits]
    assert all(len(r.hits) == 2 for r in res.results)


def test_a_run_other_than_the_indexed_one_is_refused(pipeline, tmp_path: Path) -> None:
    """Regression: --run of another run embedded the queries with a student that did not make the
    gallery, and the ranking was silently meaningless."""
    import shutil

    other = tmp_path / "other_run"
    shutil.copytree(pipeline.run_dir, other)
    _, _, path = _clips(pipeline, "train")[0]
    with pytest.raises(ConfigError, match="the index holds student run 'ccl', embedded by"):
        retrieve(RetrieveConfig(index=str(pipeline.index), queries=(path,), run_dir=str(other)))
    (r,) = retrieve(RetrieveConfig(index=str(pipeline.index), queries=(path,), run_dir=str(pipeline.run_dir))).results
    assert r.hits[0].score == pytest.approx(1.0, abs=1e-4)


def test_bad_queries_name_the_file(pipeline, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "notes.mp4"
    junk.write_text("this is not a video\n")
    with pytest.raises(MediaError, match="notes.mp4"):
        retrieve(RetrieveConfig(index=str(pipeline.index), queries=(str(junk),)))
    with pytest.raises(ConfigError, match="no-such-clip.*not a clip id"):
        retrieve(RetrieveConfig(index=str(pipeline.index), queries=("no-such-clip",)))
    with pytest.raises(ConfigError, match="PNG"):
        retrieve(RetrieveConfig(index=str(pipeline.index), queries=("x",), save_grid=str(tmp_path / "g.jpg")))
    with pytest.raises(SystemExit) as exit_info:
        main(["retrieve", "--index", str(pipeline.index), "--query", str(junk)])
    assert exit_info.value.code == 2
    assert "notes.mp4" in capsys.readouterr().err


def test_cli_json_and_grid(pipeline, tmp_path: Path) -> None:
    _, _, path = _clips(pipeline, "test")[1]
    _, train_id, _ = _clips(pipeline, "train")[2]
    grid = tmp_path / "grid.png"
    res = CliRunner().invoke(cli, ["retrieve", "--index", str(pipeline.index), "-q", path, "-q", train_id,
                                   "--k", "3", "--save-grid", str(grid), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert [q["kind"] for q in data["queries"]] == ["video", "clip"]
    assert all(len(q["hits"]) == 3 for q in data["queries"])
    assert set(data["queries"][0]["hits"][0]) == {"rank", "row", "clip_id", "label", "class_name", "score", "path"}
    assert data["grid"] == str(grid)
    png = grid.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    human = CliRunner().invoke(cli, ["retrieve", "--index", str(pipeline.index), "-q", train_id, "--k", "2"])
    assert human.exit_code == 0 and "clip id" in human.output and train_id in human.output


def test_html_page_plays_queries_and_results(pipeline, tmp_path: Path) -> None:
    """--html: one section per query; an audio query gets an audio player; results link the store's
    clips relative to the page, marked by class (test_report.py checks windows, test_report_browser.py
    plays such a page in Chromium)."""
    from html.parser import HTMLParser
    from urllib.parse import unquote, urlsplit

    test_path = _clips(pipeline, "test")[0][2]
    _, train_id, _ = _clips(pipeline, "train")[1]
    wav = _wav_of(_with_audio(pipeline, "train")[2], tmp_path / "sound.wav")
    page = tmp_path / "site" / "results.html"
    res = retrieve(RetrieveConfig(index=str(pipeline.index), queries=(test_path, train_id, str(wav)), k=3,
                                  html=str(page)))
    assert res.html == str(page) and res.as_dict()["html"] == str(page)

    class Players(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.found: list[tuple[str, str]] = []

        def handle_starttag(self, tag: str, attrs: list) -> None:
            if tag in ("video", "audio"):
                self.found.append((tag, dict(attrs)["src"]))

    players = Players()
    html = page.read_text(encoding="utf-8")
    players.feed(html)
    assert html.count("<section>") == 3
    assert [t for t, _ in players.found] == ["video"] * 4 + ["video"] * 4 + ["audio"] + ["video"] * 3
    with open_store(pipeline.store) as store:
        paths = {str(Path(str(p)).resolve()) for p in store.clips.path}
    for tag, src in players.found:
        target = (page.parent / unquote(urlsplit(src).path)).resolve()
        assert target.is_file() and not src.startswith("/")
        if tag == "video" and target != Path(test_path).resolve():
            # A store clip; these are whole files (no start/end recorded), so no window fragment.
            assert str(target) in paths and "#t=" not in src
    # Query classes are known here (a store file, a clip id; the wav's is not): marks for the first two only.
    marks = html.count('class="mark same"') + html.count('class="mark other"')
    assert marks == 6
    with pytest.raises(ConfigError, match="ending in .html"):
        retrieve(RetrieveConfig(index=str(pipeline.index), queries=(train_id,), html=str(tmp_path / "r.pdf")))
