"""`ccl-cache demo --quick`: the whole pipeline end to end through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from ccl_cache.experiments.demo import DemoConfig
from ccl_cache.errors import ConfigError
from ccl_cache_cli.main import cli

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow  # in the full run, not the quick loop (see README)
def test_demo_quick_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    res = CliRunner().invoke(cli, ["demo", "--quick", "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    # Every output the demo announces exists, and the pictures are PNGs.
    for name, path in summary["outputs"].items():
        assert Path(path).exists(), f"{name}: {path} missing"
    for png in (summary["outputs"]["grid"], summary["outputs"]["benchmark:plot"]):
        assert Path(png).read_bytes()[:8] == PNG
    for part in ("store.zarr", "runs/baseline/checkpoints/best.pt", "runs/ccl/summary.json", "index/index.faiss",
                 "teachers/audio.pt", "teachers/image.pt", "data/manifest.csv", "demo.yaml"):
        assert (out / part).exists(), part
    # The comparison table: both runs (with recognition) and both teachers, all numbers.
    rows = {r["source"]: r for r in summary["rows"]}
    assert set(rows) == {"baseline (baseline)", "ccl (ccl)", "teacher audio/small_audio", "teacher image/small_image"}
    for row in rows.values():
        for key in ("recall@1", "recall@5", "recall@10", "mAP"):
            assert 0.0 <= row[key] <= 1.0, (row["source"], key)
        assert row["recall@1"] <= row["recall@5"] <= row["recall@10"]
    assert all(0.0 <= rows[r]["video_top1"] <= 1.0 for r in ("baseline (baseline)", "ccl (ccl)"))
    assert rows["teacher audio/small_audio"]["video_top1"] is None
    # The retrieve example found k results for its query and drew them.
    (query,) = summary["retrieval"]["queries"]
    assert query["kind"] == "video" and len(query["hits"]) == DemoConfig.quick().k
    md = (out / "summary.md").read_text()
    assert "| ccl (ccl) |" in md and "retrieval_grid.png" in md
    assert set(summary["seconds"]) >= {"synth", "teach", "extract", "distill:baseline", "distill:ccl", "index",
                                       "benchmark", "retrieve"}
    # A second demo into the same folder is refused unless --overwrite.
    again = CliRunner().invoke(cli, ["demo", "--quick", "--out", str(out)])
    assert again.exit_code != 0 and isinstance(again.exception, ConfigError)
    assert "--overwrite" in str(again.exception)


def test_demo_config_is_checked() -> None:
    with pytest.raises(ConfigError, match="include 'ccl'"):
        DemoConfig.quick(methods=("baseline",)).validate()
    with pytest.raises(ConfigError, match="device 'gpu'"):  # before any step writes
        DemoConfig.quick(device="gpu").validate()


def test_overwrite_never_clears_a_folder_that_holds_no_demo(tmp_path: Path) -> None:
    """Regression: ``demo --overwrite`` removed data/, runs/, ... of any folder, the user's own too."""
    mine = tmp_path / "project" / "data" / "my_video_list.txt"
    mine.parent.mkdir(parents=True)
    mine.write_text("keep me")
    result = CliRunner().invoke(cli, ["demo", "--quick", "--out", str(tmp_path / "project"), "--overwrite"])
    assert result.exit_code != 0 and "holds no ccl-cache demo" in str(result.exception)
    assert mine.read_text() == "keep me"
