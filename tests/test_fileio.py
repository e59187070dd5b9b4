"""Atomic writes: the previous file survives a failure, and kept files get the usual mode."""

from __future__ import annotations

import stat
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from ccl_cache import fileio
from ccl_cache.fileio import atomic_path, atomic_write_text, save_config, sha256_file


def test_failure_inside_the_block_keeps_the_previous_file(tmp_path: Path) -> None:
    target = tmp_path / "ckpt.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half-written")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.txt"]  # no temp debris


def test_kept_files_follow_the_umask_not_0600(tmp_path: Path) -> None:
    # Regression: mkstemp's 0600 leaked into configs and checkpoints users share.
    atomic_write_text(tmp_path / "config.yaml", "a: 1\n")
    assert stat.S_IMODE((tmp_path / "config.yaml").stat().st_mode) == 0o666 & ~fileio._UMASK


def test_save_config_writes_a_dataclass_as_yaml(tmp_path: Path) -> None:
    @dataclass(frozen=True)
    class Cfg:
        path: Path
        milestones: tuple[int, ...]

    save_config(Cfg(Path("/x/y"), (150, 225)), tmp_path / "c.yaml")
    assert yaml.safe_load((tmp_path / "c.yaml").read_text()) == {"path": "/x/y", "milestones": [150, 225]}
    assert len(sha256_file(tmp_path / "c.yaml")) == 64
