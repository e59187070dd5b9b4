"""`ccl-cache synth`: options reach the library, JSON on stdout, table on stderr, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from ccl_cache.errors import ConfigError
from ccl_cache.manifest import load_manifest
from ccl_cache_cli.main import cli, main

TINY = ["--classes", "2", "--clips-per-class", "3", "--pretrain-clips-per-class", "1", "--duration", "0.4",
        "--size", "32", "--fps", "10", "--no-audio-rate", "0.34", "--gap", "0.34", "--val-fraction", "0",
        "--test-fraction", "0.34", "--seed", "7"]


def test_synth_json_summary_and_files(tmp_path: Path) -> None:
    out = tmp_path / "data"
    result = CliRunner().invoke(cli, ["synth", str(out), *TINY, "--workers", "2", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["clips"] == 8 and summary["files_written"] == 11
    assert summary["by_split"] == {"pretrain": 2, "train": 4, "val": 0, "test": 2}
    # 6 student clips: round(0.34 * 6) = 2 without audio and 2 with a gap.
    assert summary["no_audio_clips"] == 2 and summary["gap_clips"] == 2
    assert set(summary["by_class"]) == {"c00_red_circle_right", "c01_red_circle_down"}
    manifest = load_manifest(out / "manifest.csv")
    assert len(manifest) == 8 and all(Path(r.path).is_file() for r in manifest.records)
    truth = json.loads((out / "synth.json").read_text())
    assert truth["config"]["fps"] == 10 and truth["config"]["seed"] == 7 and truth["config"]["size"] == 32


def test_synth_human_output_goes_to_stderr(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["synth", str(tmp_path / "d"), *TINY, "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert "c01_red_circle_down" in result.stderr and "without audio" in result.stderr


def test_synth_refuses_non_empty_dir_until_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "full"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    result = CliRunner().invoke(cli, ["synth", str(out), *TINY])
    assert isinstance(result.exception, ConfigError) and "not empty" in str(result.exception)
    with pytest.raises(SystemExit) as exit_info:  # the console entry point: one red line, status 2
        main(["synth", str(out), *TINY])
    assert exit_info.value.code == 2 and "--overwrite" in capsys.readouterr().err
    result = CliRunner().invoke(cli, ["synth", str(out), *TINY, "--workers", "1", "--overwrite", "--json"])
    assert result.exit_code == 0, result.output
    assert (out / "keep.txt").exists() and len(list((out / "videos").iterdir())) == 8


def test_synth_bad_option_values_are_clear(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["synth", str(tmp_path / "x"), "--size", "33"])
    assert isinstance(result.exception, ConfigError) and str(result.exception).startswith("--size=33: expected")
    # The library's message names SynthConfig's fields; the command names the options typed.
    result = CliRunner().invoke(cli, ["synth", str(tmp_path / "x"), "--no-audio-rate", "1.5"])
    assert str(result.exception).startswith("--no-audio-rate=1.5: expected a fraction")
    result = CliRunner().invoke(cli, ["synth", str(tmp_path / "x"), "--val-fraction", "0.6", "--test-fraction", "0.5"])
    assert "--test-fraction=0.5" in str(result.exception) and "SynthConfig" not in str(result.exception)
    result = CliRunner().invoke(cli, ["synth", str(tmp_path / "y"), "--workers", "0"])
    assert result.exit_code == 2 and "--workers" in result.output
