"""The plan printed before long jobs (ccl_cache.plan): its disk estimate against the bytes a small
run really writes, --dry-run writing nothing, and the refusal naming the options that make it fit."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from ccl_cache import extract as ex
from ccl_cache.errors import ConfigError, StoreError
from ccl_cache.experiments.synth import SynthConfig, generate
from ccl_cache.extract import FrameCacheConfig, build_frame_cache, plan_extraction, plan_frame_cache
from ccl_cache.plan import Plan, Probe
from ccl_cache.store import open_store, space
from ccl_cache.testing.extraction import save_small_teachers, small_extract_args
from ccl_cache_cli.main import cli

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@dataclasses.dataclass(frozen=True)
class Data:
    manifest: Path
    audio_weights: Path
    image_weights: Path


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Data:
    folder = tmp_path_factory.mktemp("plan")
    generate(folder / "synth", SynthConfig(classes=3, clips_per_class=4, duration=0.6, size=32,
                                           pretrain_clips_per_class=0, no_audio=0.25, val_fraction=0.0,
                                           test_fraction=0.25, seed=3), workers=1)
    audio_w, image_w = save_small_teachers(folder, 0, 1)
    return Data(folder / "synth" / "manifest.csv", audio_w, image_w)


def config_for(data: Data, store: Path) -> ex.ExtractConfig:
    return ex.ExtractConfig(manifest=str(data.manifest), store=str(store), audio_teacher="small_audio",
                            audio_weights=str(data.audio_weights), image_teacher="small_image",
                            image_weights=str(data.image_weights), image_size=32, frames_per_clip=3, batch_size=4,
                            workers=1, device="cpu", timeout_s=30.0, dtype="float32")  # fmt: skip


@pytest.fixture(scope="module", params=[".zarr", ".h5"])
def extracted(request: pytest.FixtureRequest, data: Data, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Plan]:
    store = tmp_path_factory.mktemp("store") / f"s{request.param}"
    plan = plan_extraction(config_for(data, store))
    assert not store.exists()  # planning writes nothing
    assert ex.run_extraction(config_for(data, store)).exit_code == 0
    return store, plan


def test_extract_plan_is_within_ten_percent_of_the_store_written(extracted: tuple[Path, Plan]) -> None:
    store, plan = extracted
    with open_store(store) as opened:
        written = opened.size_bytes()
    assert plan.clips == 12
    assert 0.9 <= plan.disk_bytes / written <= 1.1, (plan.disk_bytes, written)


@pytest.mark.parametrize("codec", ["raw", "jpeg"])
def test_cache_plan_is_within_ten_percent_of_the_bytes_written(extracted: tuple[Path, Plan], codec: str,
                                                               tmp_path: Path) -> None:
    """raw: exact pixels in chunk-aligned regions. jpeg: on a run this small the one byte segment
    is sized by the codec's per-frame estimate, which is what takes disk (so the bound holds by
    construction here); on a large run the disk follows the real JPEG sizes, which the codec's
    estimate over-states for easy content (the plan is then an upper bound, not within 10%)."""
    import shutil

    store = tmp_path / extracted[0].name
    (shutil.copytree if extracted[0].is_dir() else shutil.copy)(extracted[0], store)
    config = FrameCacheConfig(size=(32, 32), workers=0, codec=codec)
    with open_store(store) as opened:
        before = opened.size_bytes()
    plan = plan_frame_cache(store, config)
    build_frame_cache(store, config)
    with open_store(store) as opened:
        written = opened.size_bytes() - before
    assert plan.seconds is not None and plan.seconds >= 0
    assert 0.9 <= plan.disk_bytes / written <= 1.1, (plan.disk_bytes, written)


def test_extract_dry_run_writes_nothing(data: Data, tmp_path: Path) -> None:
    store = tmp_path / "dry.zarr"
    args = ["extract", str(data.manifest), "--store", str(store),
            *small_extract_args(data.audio_weights, data.image_weights, frames_per_clip=3, batch_size=4, json=True)]
    result = CliRunner().invoke(cli, [*args, "--dry-run"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["plan"]["clips"] == 12
    assert not store.exists() and list(tmp_path.iterdir()) == []


def test_cache_clips_dry_run_writes_nothing(extracted: tuple[Path, Plan]) -> None:
    store = extracted[0]
    with open_store(store) as opened:
        before = opened.size_bytes()
    result = CliRunner().invoke(cli, ["cache-clips", str(store), "--workers", "0", "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["plan"]["disk_bytes"] > 0
    with open_store(store) as opened:
        assert opened.size_bytes() == before and not opened.has("frames")


def test_a_disk_shortfall_refuses_with_the_options_named(data: Data, extracted: tuple[Path, Plan],
                                                         tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(space, "free_bytes", lambda path: 1000)
    with pytest.raises(StoreError, match="--dtype float16 or fewer --frames-per-clip"):
        ex.run_extraction(config_for(data, tmp_path / "full.zarr"))
    assert not (tmp_path / "full.zarr").exists()
    with pytest.raises(StoreError, match="--fps.*--size, --codec jpeg"):
        plan_frame_cache(extracted[0], FrameCacheConfig(size=(32, 32), workers=0, codec="raw",
                                                        overwrite=True)).check()
    result = CliRunner().invoke(cli, ["cache-clips", str(extracted[0]), "--workers", "0", "--codec", "raw"])
    assert result.exit_code != 0 and "--max-frames" in str(result.exception)


def test_every_audio_segment_is_counted_before_the_run(data: Data, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """--audio-segment 0.1 on 0.6 s clips stores 6 slots per clip: the plan and the up-front check
    count all of them (they counted one), probing the clips the manifest gives no window."""
    config = dataclasses.replace(config_for(data, tmp_path / "seg.zarr"), audio_segment=0.1, image_teacher=None)
    plan = plan_extraction(config)
    one_slot = plan_extraction(dataclasses.replace(config, audio_segment=None))
    assert not (tmp_path / "seg.zarr").exists()
    assert ex.run_extraction(config).exit_code == 0
    with open_store(tmp_path / "seg.zarr") as opened:
        written, slots = opened.size_bytes(), opened.teacher("audio/small_audio").frames
    assert slots == 6
    assert 0.9 <= plan.disk_bytes / written <= 1.1, (plan.disk_bytes, written)
    assert plan_extraction(config).disk_bytes == plan.disk_bytes  # a resume reads K_a from the store
    # A disk that holds one slot per clip but not six is refused before any model loads.
    monkeypatch.setattr(space, "free_bytes", lambda path: (one_slot.disk_bytes + plan.disk_bytes) // 2)
    assert plan.disk_bytes > (one_slot.disk_bytes + plan.disk_bytes) // 2
    with pytest.raises(StoreError, match="not enough free disk space"):
        ex.run_extraction(dataclasses.replace(config, store=str(tmp_path / "full.zarr")))
    assert not (tmp_path / "full.zarr").exists()


def test_a_ram_shortfall_refuses_with_the_fix_named() -> None:
    """The Plan's own rule (no command makes a RAM plan yet: distill's is not built)."""
    plan = Plan("a job", "s.zarr", 10, ram={"teacher arrays": 10 << 30}, available_ram=4 << 30,
                ram_budget=2 << 30, ram_fix="use fewer frames per clip")
    assert "NOT ENOUGH" in plan.render() and plan.as_dict()["fits"] is False
    with pytest.raises(ConfigError, match="teacher arrays 10.00 GiB.*use fewer frames per clip"):
        plan.check()


def test_distill_prints_its_plan_and_a_dry_run_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fixtures_distill import make_store

    from ccl_cache.store import open_store, space

    store = make_store(tmp_path)
    out = tmp_path / "runs" / "ccl"
    args = ["distill", str(store), "--method", "ccl", "--preset", "small", "--out", str(out), "--dry-run", "--json"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)["plan"]
    assert plan["clips"] > 0 and plan["disk"]["checkpoints (last, best)"] > 0 and plan["fits"]
    with open_store(store) as opened:
        assert plan["disk"]["student embeddings in the store"] == 4 * 512 * opened.n
    assert any(key.startswith("audio/") for key in plan["ram"]) and not out.exists()
    monkeypatch.setattr(space, "free_bytes", lambda path: 1000)
    refused = CliRunner().invoke(cli, args[:-2])
    assert refused.exit_code != 0 and "--no-embed" in str(refused.exception) and not out.exists()


class Ticks:
    """A fake clock: every read is one second after the last, so each timed interval of a probe
    that reads the clock before and after its work is exactly 1 s (no timing in the assertions)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def test_the_probe_projects_the_slower_side_of_the_pipeline() -> None:
    probe = Probe("clip", 3, {"decode": 0.3, "teachers": 0.05}, ("decode",), workers=2, units=1000)
    assert probe.per_unit == pytest.approx(0.15) and probe.seconds == pytest.approx(150.0)
    assert dataclasses.replace(probe, workers=0).per_unit == pytest.approx(0.35)  # one process does both
    assert dataclasses.replace(probe, workers=10).per_unit == pytest.approx(0.05)  # the teachers are the bottleneck
    plan = Plan("extract", "s.zarr", 1000, seconds=probe.seconds, probe=probe)
    assert "estimate from timing 3 clip(s): decode 300.0 ms + teachers 50.0 ms per clip" in plan.render()
    assert plan.as_dict()["probe"]["per_unit"] == pytest.approx(0.15)


def test_a_probe_that_fails_leaves_the_plan_without_a_time() -> None:
    from ccl_cache.plan import with_probe

    def broken() -> Probe:
        raise RuntimeError("CUDA out of memory")

    plan = with_probe(Plan("distill", "run", 10), broken, "unused")
    assert plan.seconds is None and plan.notes == ("time: not estimated, the probe failed (RuntimeError: CUDA out "
                                                   "of memory)",)
    assert with_probe(Plan("distill", "run", 10), lambda: None, "no clip decoded").notes == ("no clip decoded",)
    refused = Plan("distill", "run", 10, disk={"checkpoints": 10}, free_disk=1)
    assert with_probe(refused, broken, "unused") is refused  # a run that cannot fit is not timed


def test_the_extract_plan_times_its_first_clips(data: Data, tmp_path: Path) -> None:
    """Decode (the workers' share, 1 tick per clip) and the teachers (the main process's, 1 tick for
    the probed clips) → the run's time; nothing is written."""
    store = tmp_path / "probed.zarr"
    config = config_for(data, store)  # workers=1
    plan = plan_extraction(config, probe_clips=2, clock=Ticks())
    assert plan.probe is not None and plan.probe.timed == 2 and plan.probe.units == plan.clips == 12
    assert plan.probe.stages == {"decode": 1.0, "teachers": 0.5} and plan.probe.parallel == ("decode",)
    assert plan.seconds == pytest.approx(12 * max(1.0 / 1, 0.5))
    assert "estimate from timing 2 clip(s)" in plan.render() and not store.exists()
    unprobed = plan_extraction(config, probe_clips=0)
    assert unprobed.seconds is None and unprobed.probe is None and any("--no-probe" in n for n in unprobed.notes)


def test_the_cache_plan_times_its_first_clips(extracted: tuple[Path, Plan]) -> None:
    store = extracted[0]
    config = FrameCacheConfig(size=(32, 32), workers=0, codec="jpeg")
    plan = plan_frame_cache(store, config, probe_rows=2, clock=Ticks())
    assert plan.probe is not None and plan.probe.unit == "frame" and plan.probe.workers == 0
    # Two rows decoded, one tick each, over the frames of their first pieces.
    assert plan.probe.stages["decode + encode"] == pytest.approx(2.0 / plan.probe.timed)
    assert plan.seconds == pytest.approx(plan.probe.stages["decode + encode"] * plan.probe.units)
    with open_store(store) as opened:
        assert not opened.has("frames")
    assert plan_frame_cache(store, config, probe_rows=0).seconds is None


def test_the_cache_builds_disk_check_is_the_plans_estimate(extracted: tuple[Path, Plan], tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """One rule: build_frame_cache checks the free disk for the bytes the plan prints."""
    import shutil

    from ccl_cache.extract import frame_cache

    store = tmp_path / extracted[0].name
    (shutil.copytree if extracted[0].is_dir() else shutil.copy)(extracted[0], store)
    asked: list[int] = []
    real = frame_cache.check_free_space
    monkeypatch.setattr(frame_cache, "check_free_space", lambda path, need, fix: (asked.append(need),
                                                                                  real(path, need, fix))[1])
    for codec in ("raw", "jpeg"):
        config = FrameCacheConfig(size=(32, 32), workers=0, codec=codec, overwrite=True)
        plan = plan_frame_cache(store, config, probe_rows=0)
        with open_store(store) as opened:
            freed = opened.freed_by_delete("frames")
        build_frame_cache(store, config)
        assert asked[-1] == plan.disk_bytes - freed, codec


def test_the_distill_plan_times_a_few_training_steps(tmp_path: Path) -> None:
    """Two steps of the real student on the CPU, the first a warm-up: the loader's work and the
    step (1 tick each), projected over every step of the run; nothing is written."""
    from fixtures_distill import make_store

    from ccl_cache.train import PRESETS, TrainConfig
    from ccl_cache.train.budget import training_plan

    store = make_store(tmp_path)
    config = TrainConfig(store=str(store), out=str(tmp_path / "run"), **{**PRESETS["small"], "epochs": 3, "workers": 0,
                                                                         "device": "cpu"})
    with open_store(store) as opened:
        before = opened.size_bytes()
    plan = training_plan(config, probe_steps=2, clock=Ticks())
    assert plan.probe is not None and plan.probe.unit == "step" and plan.probe.timed == 1
    assert plan.probe.stages == {"loader": 1.0, "step": 1.0}  # decode on the CPU: no device decoding stage
    train = int(plan.notes[0].split()[1].rstrip(","))  # "train N, val ..."
    assert plan.probe.units == 3 * (train // 8)
    assert plan.seconds == pytest.approx(2.0 * plan.probe.units)  # no workers: the loader, then the step
    assert not (tmp_path / "run").exists()
    with open_store(store) as opened:
        assert opened.size_bytes() == before
    device_decode = training_plan(dataclasses.replace(config, decode="device"), probe_steps=2, clock=Ticks())
    assert device_decode.probe is not None and device_decode.probe.stages == {"loader": 1.0, "device decode": 1.0,
                                                                              "step": 1.0}


def test_no_probe_leaves_the_time_out(extracted: tuple[Path, Plan]) -> None:
    result = CliRunner().invoke(cli, ["cache-clips", str(extracted[0]), "--workers", "0", "--dry-run", "--json",
                                      "--no-probe"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)["plan"]
    assert plan["seconds"] is None and plan["probe"] is None and any("--no-probe" in n for n in plan["notes"])
    probed = json.loads(CliRunner().invoke(cli, ["cache-clips", str(extracted[0]), "--workers", "0", "--dry-run",
                                                 "--json"]).stdout)["plan"]
    assert probed["probe"]["unit"] == "frame" and probed["seconds"] == pytest.approx(probed["probe"]["seconds"])
