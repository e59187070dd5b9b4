"""docs/your-data.md's walk from a folder of videos to a retrieval, command by command, as a user
pastes it: if the page goes stale, this test fails."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parents[1] / "docs" / "your-data.md"
CLASSES = ("dog", "drums", "rain")


def walk_commands() -> list[list[str]]:
    """The first bash block under "From a folder of videos to a retrieval", one argv per command."""
    text = PAGE.read_text(encoding="utf-8")
    section = text.split("## From a folder of videos to a retrieval", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "the walk's bash block is missing"
    joined = block.group(1).replace("\\\n", " ")
    lines = [line.split("#", 1)[0].strip() for line in joined.splitlines()]
    return [shlex.split(line) for line in lines if line]


def make_folder(root: Path) -> None:
    """my_videos/<split>/<class>/<file>.mp4 from the synthetic dataset, with the page's query file."""
    from ccl_cache.experiments.synth import SynthConfig, generate
    from ccl_cache.manifest import load_manifest

    generate(root / "synth", SynthConfig(classes=3, clips_per_class=6, duration=1.0, size=64,
                                         pretrain_clips_per_class=0, seed=5), workers=1)
    manifest = load_manifest(root / "synth" / "manifest.csv")
    names = dict(zip(manifest.classes, CLASSES))
    count: dict[tuple[str, str], int] = {}
    for rec in manifest.records:
        split = "test" if rec.split == "test" else "train"
        key = (split, names[rec.label])
        count[key] = count.get(key, 0) + 1
        name = "beach.mp4" if key == ("test", "dog") and count[key] == 1 else f"clip_{count[key]}.mp4"
        target = root / "my_videos" / split / names[rec.label] / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(rec.path, target)
    shutil.rmtree(root / "synth")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_pages_walk_runs_from_a_folder_of_videos_to_a_retrieval(tmp_path: Path) -> None:
    make_folder(tmp_path)
    assert (tmp_path / "my_videos" / "test" / "dog" / "beach.mp4").is_file()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
           "PYTHONPATH": os.pathsep.join(p for p in (str(PAGE.parents[1]), os.environ.get("PYTHONPATH")) if p)}
    commands = walk_commands()
    assert [c[1] for c in commands] == ["probe", "teach", "teach", "extract", "info", "distill", "index", "retrieve"]
    for argv in commands:
        assert argv[0] == "ccl-cache"
        done = subprocess.run([sys.executable, "-m", "ccl_cache_cli.main", *argv[1:]], cwd=tmp_path, env=env,
                              capture_output=True, text=True)
        assert done.returncode == 0, f"{shlex.join(argv)} failed:\n{done.stderr[-3000:]}"
    assert (tmp_path / "grid.png").stat().st_size > 0
    found = subprocess.run([sys.executable, "-m", "ccl_cache_cli.main", "retrieve", "--index", "idx/ccl", "--query",
                            "my_videos/test/dog/beach.mp4", "--k", "5", "--json"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, check=True)
    import json

    hits = json.loads(found.stdout)["queries"][0]["hits"]
    assert len(hits) == 5 and all(h["clip_id"].startswith("train/") for h in hits)  # ids: relative paths
