"""`ccl-cache probe`: tables on stderr, JSON on stdout, exit status 1 when any file failed."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from ccl_cache.testing import make_case
from ccl_cache_cli.main import cli


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("probe_cli")
    names = ("no_audio", "rotated_90", "zero_byte", "truncated_faststart", "nonascii", "audio_only")
    return {name: make_case(name, root) for name in names}


def test_tables_and_error_rows(files: dict[str, Path]) -> None:
    result = CliRunner().invoke(cli, ["probe", str(files["rotated_90"]), str(files["zero_byte"])])
    assert result.exit_code == 1
    assert result.stdout == ""  # human output goes to stderr
    err = " ".join(result.stderr.split())  # undo rich's line wrapping
    assert "rotated_90.mp4" in err and "48x64" in err and "rotation 90" in err
    assert "zero_byte.mp4" in err and "empty" in err and "1 of 2 file(s) failed" in err


def test_json_lists_one_dict_per_file(files: dict[str, Path]) -> None:
    args = ["probe", "--json", str(files["no_audio"]), str(files["audio_only"]),
            str(files["nonascii"]), str(files["zero_byte"])]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1
    rows = json.loads(result.stdout)
    assert [row["ok"] for row in rows] == [True, True, True, False]
    assert rows[0]["video"]["codec"] == "h264" and rows[0]["has_audio"] is False
    assert rows[1]["video"] is None and rows[1]["audio"][0]["sample_rate"] == 16000
    assert rows[2]["path"] == str(files["nonascii"]) and rows[2]["coverage"] is None
    assert rows[3]["reason"] == "empty" and str(files["zero_byte"]) in rows[3]["error"]


def test_coverage_flags_truncated_files(files: dict[str, Path]) -> None:
    args = ["probe", "--json", "--coverage", str(files["no_audio"]), str(files["truncated_faststart"])]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0  # truncated files still probe: coverage tells them apart
    healthy, cut = json.loads(result.stdout)
    assert healthy["coverage"] == pytest.approx(1.0) and cut["coverage"] < 0.8
    table = CliRunner().invoke(cli, ["probe", "--coverage", str(files["truncated_faststart"])])
    assert "% of the duration has data" in table.stderr


def test_help_documents_the_exit_status() -> None:
    result = CliRunner().invoke(cli, ["probe", "--help"])
    assert result.exit_code == 0 and "1 when any failed" in " ".join(result.output.split())


def test_console_script(files: dict[str, Path]) -> None:
    exe = shutil.which("ccl-cache")
    assert exe is not None, "the ccl-cache console script is not installed (pip install -e .)"
    ok = subprocess.run([exe, "probe", "--json", str(files["no_audio"])], capture_output=True,
                        text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)[0]["video"]["width"] == 64
    bad = subprocess.run([exe, "probe", str(files["zero_byte"]), str(files["no_audio"])],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "empty" in bad.stderr and bad.stdout == ""
