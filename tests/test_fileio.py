"""Atomic writes: the previous file survives a failure, and kept files get the usual mode."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

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


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o027])
def test_kept_files_follow_the_umask_not_0600(tmp_path: Path, umask: int) -> None:
    """Regression: mkstemp's 0600 leaked into configs and checkpoints users share. The expected
    mode comes from the umask the process was started with, set here, not from the module."""
    target = tmp_path / "config.yaml"
    code = ("import os, sys; os.umask(int(sys.argv[2], 8)); from pathlib import Path; "
            "from ccl_cache.fileio import atomic_write_text; atomic_write_text(Path(sys.argv[1]), 'a: 1\\n')")
    subprocess.run([sys.executable, "-c", code, str(target), oct(umask)[2:]], check=True,
                   env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask


def test_save_config_writes_a_dataclass_as_yaml(tmp_path: Path) -> None:
    @dataclass(frozen=True)
    class Cfg:
        path: Path
        milestones: tuple[int, ...]

    save_config(Cfg(Path("/x/y"), (150, 225)), tmp_path / "c.yaml")
    assert yaml.safe_load((tmp_path / "c.yaml").read_text()) == {"path": "/x/y", "milestones": [150, 225]}
    assert len(sha256_file(tmp_path / "c.yaml")) == 64
