"""The HTML report in a real browser: headless Chromium opens the page from disk and every
<video>/<audio> must load (metadata, then a decoded first frame) without error, windows must
start where the clip starts, a screenshot must show something, and (synthetic page) every player
must play: its time moves on.

Chromium is driven over its DevTools pipe (tests/browser.py): each check waits on the
page's own media events, never on a sleep, and a browser that stops answering fails the test at
a generous deadline. Skipped, saying so, where no Chromium is installed (`.ci/run` installs
Debian's `chromium` when it can).
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from ccl_cache import media
from ccl_cache.experiments.synth import SynthConfig, generate
from ccl_cache.report import LinePlot, MediaItem, ResultGroup, ResultItem, Section, Series, write_page
from browser import Chromium, find_chromium
from ccl_cache.testing import sine, write_audio

CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium browser found (chromium, chromium-browser or google-chrome on PATH, or "
                             "$CHROMIUM): install Debian's `chromium` package to run the real-browser checks")

# Resolves, per media element, once it has loaded its metadata and decoded its current frame
# (preload is raised to "auto" for that), or failed: event-driven, no timer.
VERDICT = """
(function () {
  function until(m, ok) {
    return new Promise(function (resolve) {
      function check() { if (m.error || ok(m)) { resolve(); return true; } return false; }
      if (check()) { return; }
      ["loadedmetadata", "loadeddata", "canplay", "canplaythrough", "seeked", "timeupdate", "progress", "suspend",
       "error"].forEach(function (e) {
        m.addEventListener(e, check);
      });
    });
  }
  return Promise.all(Array.from(document.querySelectorAll("video, audio")).map(function (m) {
    return until(m, function (x) { return x.readyState >= 1; }).then(function () {
      var metadata = m.readyState >= 1;
      if (!m.error) { m.preload = "auto"; }
      return until(m, function (x) { return x.readyState >= 2 && !x.seeking; }).then(function () {
        return {tag: m.tagName.toLowerCase(), src: m.getAttribute("src"), metadata: metadata,
                readyState: m.readyState, error: m.error ? m.error.code + " " + m.error.message : null,
                time: m.currentTime, start: m.dataset.start ? parseFloat(m.dataset.start) : null,
                width: m.videoWidth || 0, duration: m.duration};
      });
    });
  }));
})()
"""

# Plays every media element (muted, autoplay allowed by the browser's flags) and resolves, per
# element, once its time has moved on (or the window's end paused it) or it failed: event-driven.
PLAY = """
Promise.all(Array.from(document.querySelectorAll("video, audio")).map(function (m) {
  return new Promise(function (resolve) {
    var from = m.currentTime;
    function done(rejected) {
      resolve({tag: m.tagName.toLowerCase(), from: from, at: m.currentTime, rejected: rejected || null,
               error: m.error ? m.error.code + " " + m.error.message : null});
    }
    function check() { if (m.error || m.ended || (m.paused && m.currentTime > from) || m.currentTime > from + 0.3) { done(); } }
    ["timeupdate", "pause", "ended", "error"].forEach(function (e) { m.addEventListener(e, check); });
    m.play().catch(function (e) { done(String(e)); });
  });
}))
"""


def load_in_browser(page: Path, shot: Path | None = None, play: bool = False
                    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Open ``page`` from disk in headless Chromium: the verdict of each media element, and what
    playing each one did (with ``play``; else an empty list)."""
    assert CHROMIUM is not None
    with Chromium(CHROMIUM, width=1280, height=900) as browser:
        browser.open(page)
        verdict = browser.evaluate(VERDICT)
        if shot is not None:
            shot.write_bytes(browser.screenshot())
        played = browser.evaluate(PLAY) if play else []
    return verdict, played


def assert_all_play(verdict: list[dict[str, Any]]) -> None:
    broken = [v for v in verdict if v["error"] or not v["metadata"] or v["readyState"] < 2]
    assert not broken, f"media that did not load in Chromium: {json.dumps(broken, indent=1)}"
    for v in verdict:
        if v["tag"] == "video":
            assert v["width"] > 0, v  # a frame size: the video stream was decoded, not just the sound
        if v["start"] is not None:
            assert v["time"] == pytest.approx(v["start"], abs=0.05), v  # the window's start, not the file's


def assert_not_blank(png: Path) -> None:
    from PIL import Image, ImageStat

    with Image.open(png) as img:
        grey = img.convert("L")
        assert grey.size[0] >= 1000 and grey.size[1] >= 500
        assert ImageStat.Stat(grey).stddev[0] > 10.0  # not a flat page
        colours = np.unique(np.asarray(img.convert("RGB")).reshape(-1, 3), axis=0)
        # A page of text and plot alone has over a thousand (anti-aliasing); a blank one has one. Video
        # frames are not counted on: when the compositor paints a paused video's first frame is not
        # tied to any event the page sees (the media verdict checks decoding instead).
        assert len(colours) > 500


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The synthetic dataset's own mp4s (H.264 + AAC, as synth encodes them), their sound as .wav
    and .m4a (AAC), and one mp4 stored inside a tar shard."""
    root = tmp_path_factory.mktemp("browser_media")
    manifest = generate(root / "synth", SynthConfig(classes=2, clips_per_class=2, duration=1.0, size=64,
                                                    pretrain_clips_per_class=0, val_fraction=0.0,
                                                    test_fraction=0.0), workers=1)
    videos = [r.path for r in manifest.records]
    wav = write_audio(root / "sound.wav", media.read_audio(videos[0], sample_rate=16000), sample_rate=16000,
                      codec="pcm_s16le", container_format="wav")
    m4a = write_audio(root / "tone.m4a", sine(440.0, 1.0))
    shard = root / "shard.tar"
    with tarfile.open(shard, "w") as tf:
        tf.add(videos[1], arcname="inside/clip.mp4")
    return {"videos": videos, "wav": wav, "m4a": m4a, "member": f"{shard}/inside/clip.mp4"}


def test_synthetic_clips_play_in_chromium(clips: dict[str, Any], tmp_path: Path) -> None:
    v = clips["videos"]
    sections = [
        Section("sound → video", MediaItem(str(clips["wav"]), kind="audio"), caption=("audio query", "class 0"),
                results=(ResultItem(MediaItem(v[0], 0.2, 0.9), "class 0", 0.91, True, ("#1",)),
                         ResultItem(MediaItem(v[2], 0.5, 1.0), "class 1", 0.42, False, ("#2",)),
                         ResultItem(MediaItem(clips["member"], 0.1, 0.6), "class 0", 0.40, True, ("from a tar",)))),
        Section("video query", MediaItem(v[3]), caption=("video query", "class unknown"),
                results=(ResultItem(MediaItem(v[1]), "class 0", 0.7, None),)),
        Section("aac sound", MediaItem(str(clips["m4a"]), kind="audio"), caption=("m4a",)),
        Section("a clip and its guesses, no results", MediaItem(v[2], 0.0, 1.0), caption=("sound: 0", "picture: 1"),
                groups=(ResultGroup("another source", (), "no embedding"),)),
    ]
    page = tmp_path / "elsewhere" / "report.html"
    plot = LinePlot("Recall@K", (1, 2, 5), (Series("run", (20.0, 40.0, 60.0)), Series("teacher", (10.0, 30.0, 50.0), True)),
                    "K", "Recall@K (%)", log_x=True, y_range=(0.0, 100.0))
    written = write_page(page, "browser check", sections, plot=plot)
    assert written.copied == (clips["member"],) and not written.missing
    assert "http://" not in page.read_text() and "https://" not in page.read_text()
    shot = tmp_path / "shot.png"
    verdict, played = load_in_browser(page, shot, play=True)
    assert [x["tag"] for x in verdict] == ["audio", "video", "video", "video", "video", "video", "audio", "video"]
    assert_all_play(verdict)
    assert all(x["duration"] == pytest.approx(1.0, abs=0.1) for x in verdict)
    assert_not_blank(shot)
    # Playing: every player's time moves on from where it stood (H.264 and AAC decoded, not just parsed).
    stuck = [p for p in played if p["error"] or p["rejected"] or not p["at"] > p["from"]]
    assert not stuck, f"media that did not play in Chromium: {json.dumps(stuck, indent=1)}"


@pytest.mark.slow
def test_retrieve_and_benchmark_pages_play(pipeline: Any, tmp_path: Path) -> None:
    """The commands' own pages (store clips, a video file, a clip id and a sound as queries) load
    every clip in Chromium."""
    from ccl_cache.store import open_store
    from ccl_cache_cli.main import cli

    with open_store(pipeline.store) as store:
        c = store.clips
        train = [i for i in range(store.n) if str(c.split[i]) == "train"]
        test = [i for i in range(store.n) if str(c.split[i]) == "test"]
        video, clip_id = str(c.path[test[0]]), str(c.id[train[1]])
        mask = np.asarray(store.teacher("audio/small_audio").mask[:], dtype=bool)
        sound_of = str(c.path[next(i for i in train if mask[i])])
    wav = write_audio(tmp_path / "q.wav", media.read_audio(sound_of, sample_rate=16000), sample_rate=16000,
                      codec="pcm_s16le", container_format="wav")
    page = tmp_path / "pages" / "retrieve.html"
    res = CliRunner().invoke(cli, ["retrieve", "--index", str(pipeline.index), "-q", video, "-q", clip_id,
                                   "-q", str(wav), "--k", "3", "--html", str(page), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["html"] == str(page)
    verdict, _ = load_in_browser(page)
    assert [x["tag"] for x in verdict].count("audio") == 1 and len(verdict) == 3 + 3 * 3
    assert_all_play(verdict)

    bench = tmp_path / "pages" / "bench.html"
    res = CliRunner().invoke(cli, ["benchmark", "retrieval", str(pipeline.store), "--run", str(pipeline.run_dir),
                                   "--teacher", "audio/small_audio", "--html", str(bench), "--html-queries", "2",
                                   "--html-k", "3"])
    assert res.exit_code == 0, res.output
    shot = tmp_path / "bench.png"
    verdict, _ = load_in_browser(bench, shot)
    assert 2 + 2 * 3 <= len(verdict) <= 2 + 2 * 2 * 3  # 2 queries, 3 results from each source that has them
    assert_all_play(verdict)
    assert_not_blank(shot)
