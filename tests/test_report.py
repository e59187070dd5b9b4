"""The HTML report page (ccl_cache.report): links, escaping, players, tar members, atomic write."""

from __future__ import annotations

import os
import re
import shutil
import tarfile
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from ccl_cache.errors import ConfigError, MediaError
from ccl_cache.report import (
    LinePlot, MediaItem, ResultGroup, ResultItem, Section, Series, Table, fragment, render_svg, write_page,
)


class Elements(HTMLParser):
    """Every start tag with its attributes, and the page's text."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(path: Path) -> Elements:
    p = Elements()
    p.feed(path.read_text(encoding="utf-8"))
    return p


def media_srcs(path: Path) -> list[tuple[str, str]]:
    return [(tag, str(a["src"])) for tag, a in parse(path).tags if tag in ("video", "audio")]


def resolve(page: Path, src: str) -> Path:
    """Where a relative ``src`` of ``page`` points, as a browser resolves it (fragment dropped)."""
    return (page.parent / unquote(urlsplit(src).path)).resolve()


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    media = tmp_path / "data" / "media dir"
    media.mkdir(parents=True)
    out = {"video": media / "clip #1 ü.mp4", "audio": media / "bark?.wav", "other": media / "b.mp4"}
    for i, p in enumerate(out.values()):
        p.write_bytes(bytes([i]) * 100)
    return out


def test_relative_links_from_another_folder_survive_a_move(tmp_path: Path, files: dict[str, Path]) -> None:
    page = tmp_path / "reports" / "deep" / "page.html"
    sections = [Section("q", MediaItem(str(files["audio"]), kind="audio"),
                        (ResultItem(MediaItem(str(files["video"]), 1.5, 2.5), "dog", 0.9, True),
                         ResultItem(MediaItem(str(files["other"])), "cat", 0.5, False)))]
    written = write_page(page, "t", sections)
    assert written.path == page and not written.missing
    srcs = media_srcs(page)
    assert [tag for tag, _ in srcs] == ["audio", "video", "video"]
    for _, src in srcs:
        assert not src.startswith(("/", "file:")) and ":" not in src.split("/")[0]  # relative, no scheme
        assert src.startswith("../../data/media%20dir/")
    assert [resolve(page, s) for _, s in srcs] == [files["audio"].resolve(), files["video"].resolve(),
                                                    files["other"].resolve()]
    assert srcs[1][1].endswith("#t=1.500,2.500") and "#" not in srcs[2][1]  # the window; '#' in a name is encoded
    # Move the whole folder: page and media keep their relative places, the links still resolve.
    moved = tmp_path.parent / (tmp_path.name + "_moved")
    shutil.move(str(tmp_path), moved)
    new_page = moved / "reports" / "deep" / "page.html"
    assert all(resolve(new_page, s).is_file() for _, s in media_srcs(new_page))


def test_every_text_is_escaped(tmp_path: Path, files: dict[str, Path]) -> None:
    evil = '<script>alert("x")</script> & \'q\''
    page = write_page(tmp_path / "p.html", evil, [
        Section(evil, MediaItem(str(files["video"])), (ResultItem(MediaItem(str(files["other"])), evil, 0.1, None,
                                                                  (evil,)),), (evil,),
                (ResultGroup(evil, (), evil),))],
        plot=LinePlot(evil, (1, 2), (Series(evil, (1.0, 2.0)),), evil, evil), notes=[evil],
        table=Table((evil,), ((evil,),), evil)).path
    html = page.read_text(encoding="utf-8")
    assert "<script>alert" not in html and "alert(&quot;x&quot;)" in html
    assert html.count("<script>") == 1  # the page's own seek script only
    assert parse(page).text.count(evil) >= 8  # the text reads back unchanged


def test_players_and_sections_without_results(tmp_path: Path, files: dict[str, Path]) -> None:
    page = tmp_path / "p.html"
    write_page(page, "players", [
        Section("sound query", MediaItem(str(files["audio"]), kind="audio"), caption=("audio query", "dog")),
        Section("a clip alone", MediaItem(str(files["video"]), 0.0, 1.0), caption=("sound: cat", "picture: dog")),
        Section("grouped", None, (), ("no file",), (ResultGroup("run a", (), "nothing here"),)),
    ])
    tags = parse(page).tags
    audio = [a for t, a in tags if t == "audio"]
    video = [a for t, a in tags if t == "video"]
    assert len(audio) == 1 and audio[0]["src"].endswith("bark%3F.wav") and "controls" in audio[0]
    assert len(video) == 1 and video[0]["preload"] == "metadata" and "controls" in video[0]
    assert video[0]["data-start"] == "0.000" and video[0]["data-end"] == "1.000"
    text = " ".join(parse(page).text)
    assert "sound: cat" in text and "nothing here" in text and "no file" in text
    html = page.read_text()
    assert 'class="tile result' not in html  # no result tiles anywhere
    # Same-class marks: green and red, none when the class is unknown.
    write_page(page, "marks", [Section("q", None, tuple(ResultItem(MediaItem(str(files["other"])), "c", 0.5, m)
                                                         for m in (True, False, None)))])
    marks = re.findall(r'class="tile result ?(\w*)"', page.read_text())
    assert marks == ["same", "other", ""]
    assert page.read_text().count('class="mark') == 2


def test_tar_members_are_copied_once_beside_the_page(tmp_path: Path, files: dict[str, Path]) -> None:
    shard = tmp_path / "shards" / "00001.tar"
    shard.parent.mkdir()
    payload = os.urandom(5000)
    member = tmp_path / "0001.mp4"
    member.write_bytes(payload)
    with tarfile.open(shard, "w") as tf:
        tf.add(member, arcname="0001.mp4")
    page = tmp_path / "site" / "report.html"
    item = MediaItem(f"{shard}/0001.mp4", 0.0, 1.0)
    written = write_page(page, "tar", [Section("q", item, (ResultItem(item, "dog"),))])
    assert written.media_dir == tmp_path / "site" / "report_media"
    (copy,) = list(written.media_dir.iterdir())
    assert copy.read_bytes() == payload and written.copied == (item.path,)
    srcs = media_srcs(page)
    assert len(srcs) == 2 and all(resolve(page, s) == copy.resolve() for _, s in srcs)
    assert all(s.startswith("report_media/") for _, s in srcs)
    stamp = copy.stat().st_mtime_ns
    write_page(page, "tar again", [Section("q", item)])
    assert copy.stat().st_mtime_ns == stamp and len(list(written.media_dir.iterdir())) == 1  # not copied again
    with pytest.raises(MediaError, match="no member 'gone.mp4'"):
        write_page(page, "x", [Section("q", MediaItem(f"{shard}/gone.mp4"))])


def test_written_atomically_old_page_kept_on_failure(tmp_path: Path, files: dict[str, Path]) -> None:
    page = tmp_path / "p.html"
    write_page(page, "first", [Section("q", MediaItem(str(files["video"])))])
    before = page.read_bytes()
    shard = tmp_path / "s.tar"
    with tarfile.open(shard, "w"):
        pass
    with pytest.raises(MediaError):  # fails while rendering: the old page stays whole
        write_page(page, "second", [Section("q", MediaItem(str(files["video"]))),
                                    Section("bad", MediaItem(f"{shard}/none.mp4"))])
    assert page.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "p.html", "s.tar"]  # no temporary left
    with pytest.raises(ConfigError, match="ending in .html"):
        write_page(tmp_path / "p.png", "x", [])
    (tmp_path / "dir.html").mkdir()
    with pytest.raises(ConfigError, match="is a directory"):
        write_page(tmp_path / "dir.html", "x", [])


def test_no_address_outside_the_page(tmp_path: Path, files: dict[str, Path]) -> None:
    page = write_page(tmp_path / "p.html", "self-contained", [
        Section("q", MediaItem(str(files["audio"]), kind="audio"), (ResultItem(MediaItem(str(files["video"]), 1, 2),
                                                                                "dog", 0.3, True),))],
        plot=LinePlot("R@K", (1, 5, 10), (Series("run", (10.0, 50.0, 70.0)),), "K", "%", log_x=True),
        table=Table(("a",), (("1",),))).path
    html = page.read_text()
    assert not re.search(r"https?://|(?:src|href)=\"/|<link|@import|url\(", html, re.I)
    srcs = [a.get("src") for t, a in parse(page).tags if a.get("src")]
    assert len(srcs) == 2  # the two players; no script or style is loaded from a file
    assert "<style>" in html and "<svg" in html


def test_missing_media_shown_not_linked(tmp_path: Path, files: dict[str, Path]) -> None:
    written = write_page(tmp_path / "p.html", "m", [Section("q", MediaItem(str(tmp_path / "gone.mp4")),
                                                            (ResultItem(MediaItem(str(files["video"])), "dog"),))])
    assert written.missing == (str(tmp_path / "gone.mp4"),)
    html = written.path.read_text()
    assert "not found: " in html and "1 media file(s) were not found" in html
    assert len(media_srcs(written.path)) == 1  # only the file that exists gets a player


def test_svg_plot() -> None:
    plot = LinePlot("Recall", (1, 2, 5, 10), (Series("run", (10.0, 20.0, 40.0, 80.0)),
                                             Series("teacher", (5.0, float("nan"), 30.0, 60.0), dashed=True)),
                    "K", "Recall@K (%)", log_x=True, y_range=(0.0, 100.0))
    svg = render_svg(plot)
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert svg.count("<circle") == 7  # the missing value has no point ...
    assert svg.count("<polyline") == 2  # ... and breaks the teacher's line: only its last two points are joined
    assert svg.count('stroke-dasharray="6 4"') == 2  # the teacher's line and its legend
    xs = [float(x) for x in re.findall(r'<circle cx="([\d.]+)"', svg)[:4]]
    assert xs[1] - xs[0] == pytest.approx(xs[3] - xs[2], rel=0.01)  # log axis: 1→2 as wide as 5→10
    with pytest.raises(ConfigError, match="has 1 values for 2"):
        LinePlot("x", (1, 2), (Series("s", (1.0,)),))


def test_media_item_checks() -> None:
    assert MediaItem("a.mp4", float("nan"), float("nan")).start is None
    import numpy as np

    item = MediaItem("a.mp4", np.float32(1.5), np.float64("nan"))  # as read from a store's columns
    assert (item.start, item.end) == (1.5, None) and type(item.start) is float
    assert fragment(None, None) == "" and fragment(2.0, None) == "#t=2.000" and fragment(None, 3.0) == "#t=0.000,3.000"
    with pytest.raises(ConfigError, match="kind='image'"):
        MediaItem("a.png", kind="image")
    with pytest.raises(ConfigError, match="empty"):
        MediaItem("a.mp4", 2.0, 1.0)


def test_video_posters_are_the_first_frame_of_the_window(tmp_path: Path, files: dict[str, Path]) -> None:
    import base64
    import io

    import numpy as np
    from PIL import Image

    from ccl_cache.testing import decode_index, write_video

    video = write_video(tmp_path / "counted.mp4", num_frames=25, fps=25)  # each frame shows its index
    page = tmp_path / "p.html"
    write_page(page, "posters", [Section("q", MediaItem(str(video), 0.4, 0.8),
                                         (ResultItem(MediaItem(str(video)), "whole file"),
                                          ResultItem(MediaItem(str(files["other"])), "not decodable")))])
    videos = [a for t, a in parse(page).tags if t == "video"]
    assert len(videos) == 3 and "poster" not in videos[2]  # a file that does not decode: player only
    frames = []
    for v in videos[:2]:
        head, _, data = str(v["poster"]).partition(",")
        assert head == "data:image/jpeg;base64"
        frames.append(np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")))
    assert frames[0].shape == (48, 64, 3)  # the video's own size: small videos are not enlarged
    assert [decode_index(f) for f in frames] == [10, 0]  # the frame shown at 0.4 s, and the file's first
    write_page(page, "no posters", [Section("q", MediaItem(str(video)))], posters=False)
    assert all("poster" not in a for t, a in parse(page).tags if t == "video")
