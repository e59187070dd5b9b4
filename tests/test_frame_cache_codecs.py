"""The frame cache's codecs (``cache-clips --codec``), each through the whole cache: build and read
back, resume, a cache of another codec, the disk-space estimate, training from it.

Parametrised over :data:`ccl_cache.codecs.FRAME_CODECS`, so a new codec runs every test here.
Videos are index videos (``ccl_cache.testing.index_frame``): a window's frames say which source
frames they are, whatever a lossy codec did to their edges.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ccl_cache import data as D
from ccl_cache.codecs import DEFAULT_CODEC, FRAME_CODECS, make_codec
from ccl_cache.errors import ConfigError, StoreError, StoreMismatchError
from ccl_cache.extract import FrameCacheConfig, build_frame_cache
from ccl_cache.extract import frame_cache
from ccl_cache.manifest import ClipRecord, Manifest
from ccl_cache.store import create_store, open_store
from ccl_cache.testing import decode_index, write_video
from ccl_cache_cli.main import cli

CODECS = FRAME_CODECS.names()
FRAMES, CLIPS, SIZE = 30, 4, (48, 64)
# A lossy codec at its default quality must stay above this PSNR against the raw cache. JPEG at
# quality 75 (4:2:0) gives ~40 dB on these flat-cell frames (its errors sit on the cells' edges and
# the red marker's chroma); a wrong frame (cells flip between 0 and 255), swapped channels or a
# shifted picture fall below 20 dB, and the 6 dB of slack absorbs libjpeg versions.
PSNR_FLOOR_DB = 34.0


def config(codec: str, **changes: object) -> FrameCacheConfig:
    """Several pieces per row (piece_frames 8 of 30 frames), so pieces and segments interleave."""
    return dataclasses.replace(FrameCacheConfig(codec=codec, size=SIZE, workers=0, chunk_frames=4, piece_frames=8),
                               **changes)


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> list[ClipRecord]:
    folder = tmp_path_factory.mktemp("codec_videos")
    return [ClipRecord(f"c{i}", str(write_video(folder / f"v{i}.mp4", size=(64, 64), num_frames=FRAMES, fps=25)),
                       "ab"[i % 2], "train") for i in range(CLIPS)]


def new_store(folder: Path, records: list[ClipRecord], suffix: str = ".zarr", name: str = "s") -> Path:
    path = folder / f"{name}{suffix}"
    create_store(path, Manifest.from_records(records), chunk_rows=4).close()
    return path


def all_frames(store_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Every cached frame of every row (uint8 (CLIPS * FRAMES, H, W, 3)) and their times."""
    with open_store(store_path) as store:
        index = D.FrameCacheIndex.load(store)
        assert index is not None
        windows = [index.read(store, row, 0, FRAMES, 1) for row in range(store.n)]
    return np.concatenate([w.frames for w in windows]), np.concatenate([w.times for w in windows])


def psnr(reference: np.ndarray, test: np.ndarray) -> float:
    mse = float(np.mean((reference.astype(np.float64) - test.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


@pytest.fixture(scope="module")
def raw_reference(videos: list[ClipRecord], tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, np.ndarray]:
    path = new_store(tmp_path_factory.mktemp("raw_reference"), videos)
    build_frame_cache(path, config("raw"))
    return all_frames(path)


def test_the_registry_feeds_the_cli_and_the_default_is_registered() -> None:
    from ccl_cache_cli.cache_clips import cache_clips

    option = next(p for p in cache_clips.params if p.name == "codec")
    assert list(option.type.choices) == CODECS and DEFAULT_CODEC in CODECS
    assert FrameCacheConfig().codec == DEFAULT_CODEC
    assert {"raw", "jpeg"} <= set(CODECS)


@pytest.mark.parametrize("codec", CODECS)
def test_codec_contract_round_trip(codec: str) -> None:
    """encode → decode on smooth frames: lengths add up, the pixels come back (exactly if lossless)."""
    c = make_codec(codec)
    y, x = np.mgrid[0:SIZE[0], 0:SIZE[1]]
    frames = np.stack([np.stack([(x * 4 + t) % 256, (y * 5) % 256, np.full_like(x, 60 + t)], -1)
                       for t in range(5)]).astype(np.uint8)
    encoded = c.encode(frames)
    assert len(encoded.lengths) == 5 and int(encoded.lengths.sum()) == encoded.data.nbytes
    if c.layout == "pixels":
        payloads = list(encoded.data)
    else:
        ends = np.cumsum(encoded.lengths)
        payloads = [encoded.data[e - n: e] for e, n in zip(ends, encoded.lengths)]
    decoded = c.decode(payloads, SIZE).numpy()
    assert decoded.shape == frames.shape and decoded.dtype == np.uint8
    if c.lossless:
        np.testing.assert_array_equal(decoded, frames)
    else:
        assert psnr(frames, decoded) > PSNR_FLOOR_DB
    assert c.decode([], SIZE).shape == (0, *SIZE, 3)


@pytest.mark.parametrize("codec", CODECS)
def test_a_worker_sends_back_what_the_codec_keeps(codec: str, videos: list[ClipRecord]) -> None:
    """A decode task encodes in the worker: what crosses the pipe to the caller is the codec's
    payload (a lossy codec's bytes, not the pixels), exactly what the sink writes."""
    from ccl_cache.extract.decode import centre_times
    from ccl_cache.extract.frame_tasks import decode_piece

    times = centre_times(0.0, 1 / 25, np.arange(8))
    row, first, data, lengths, stamps, error = decode_piece((3, 8, videos[0].path, times, SIZE, codec, None))
    assert (row, first, error) == (3, 8, "") and len(lengths) == len(stamps) == 8
    pixels = 8 * SIZE[0] * SIZE[1] * 3
    if make_codec(codec).layout == "pixels":
        assert data.shape == (8, *SIZE, 3) and data.nbytes == pixels
    else:
        assert data.ndim == 1 and data.nbytes == int(lengths.sum()) < pixels / 4
    assert decode_piece((3, 0, "/no/such.mp4", times, SIZE, codec, None))[2:5] == (None, None, None)


def test_quality_is_checked_against_the_codec() -> None:
    with pytest.raises(ConfigError, match="'raw' has no quality setting.*drop --quality"):
        FrameCacheConfig(codec="raw", quality=90)
    with pytest.raises(ConfigError, match="quality=101 is outside 1..100"):
        FrameCacheConfig(codec="jpeg", quality=101)
    with pytest.raises(ConfigError, match="unknown frame codec 'webm'; choose one of: jpeg, raw"):
        FrameCacheConfig(codec="webm")
    with pytest.raises(ConfigError, match="compression='zstd' applies to the raw codec"):
        FrameCacheConfig(codec="jpeg", compression="zstd")
    assert FrameCacheConfig(codec="jpeg").identity()["quality"] == make_codec("jpeg").default_quality


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
@pytest.mark.parametrize("codec", CODECS)
def test_build_and_read_round_trip(codec: str, suffix: str, videos: list[ClipRecord], tmp_path: Path,
                                   raw_reference: tuple[np.ndarray, np.ndarray]) -> None:
    """Raw holds the decoder's frames bitwise; a lossy codec the same frames above the PSNR floor,
    in the same order, with the same timestamps; both backends; windows through the dataset too."""
    path = new_store(tmp_path, videos, suffix)
    summary = build_frame_cache(path, config(codec))
    assert (summary.cached, summary.frames, summary.failed, summary.codec) == (CLIPS, CLIPS * FRAMES, {}, codec)
    frames, times = all_frames(path)
    reference, reference_times = raw_reference
    np.testing.assert_array_equal(times, reference_times)
    if make_codec(codec).lossless:
        np.testing.assert_array_equal(frames, reference)
    else:
        assert psnr(reference, frames) > PSNR_FLOOR_DB
    assert [decode_index(f) for f in frames] == list(range(FRAMES)) * CLIPS
    with open_store(path) as store:
        index = D.FrameCacheIndex.load(store)
        assert index is not None and (index.codec, index.quality) == (codec, make_codec(codec).quality)
        strided = index.read(store, 1, 20, 8, 2)  # frames 20, 22, ..., 28, then the last repeats
        assert [decode_index(f) for f in strided.frames] == [20, 22, 24, 26, 28, 29, 29, 29]
        # Many windows in one decode call (the GPU path's batching; here the CPU decoder).
        pixels, stamps = index.read_batch(store, [(0, 3), (2, 25), (3, 0)], 8, 1)
        assert pixels.shape == (3, 8, *SIZE, 3) and pixels.dtype == torch.uint8
        for b, (row, first) in enumerate([(0, 3), (2, 25), (3, 0)]):
            one = index.read(store, row, first, 8, 1)
            np.testing.assert_array_equal(pixels[b].numpy(), one.frames)
            np.testing.assert_array_equal(stamps[b], one.times)
    spec = D.ClipSpec(frames=8, stride=1, size=32)
    dataset = D.ClipDataset(path, [0, 1], spec=spec, source="cache")
    assert dataset.reader.cached(0) and dataset.reader.cache.codec == codec
    item = dataset[(0, 1)]
    assert item["video"].shape == (3, 8, 32, 32) and torch.isfinite(item["video"]).all()
    window = dataset.reader.windows(1, None)
    assert [decode_index(w.frames[0]) for w in window] == [0, 8, 16]


@pytest.mark.parametrize("codec", CODECS)
def test_resume_after_interruption_gives_the_same_cache(codec: str, videos: list[ClipRecord], tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    whole = new_store(tmp_path, videos, name="whole")
    build_frame_cache(whole, config(codec))
    expected = all_frames(whole)

    cut = new_store(tmp_path, videos, name="cut")
    real, writes = frame_cache._FrameSink.write, []

    def killed_at_the_seventh_piece(self: object, *args: object) -> None:
        writes.append(1)
        if len(writes) == 7:  # 4 pieces per row: row 0 done, row 1 half written
            raise KeyboardInterrupt
        real(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(frame_cache._FrameSink, "write", killed_at_the_seventh_piece)
    with pytest.raises(KeyboardInterrupt):
        build_frame_cache(cut, config(codec))
    monkeypatch.setattr(frame_cache._FrameSink, "write", real)
    with open_store(cut) as store:
        assert store.array("frames/count")[:].tolist() == [FRAMES, 0, 0, 0]
        assert store.leases() == []
    again = build_frame_cache(cut, config(codec))
    assert (again.skipped, again.cached) == (1, CLIPS - 1)
    for got, want in zip(all_frames(cut), expected):
        np.testing.assert_array_equal(got, want)  # encoding is deterministic: the same bytes decode
    if make_codec(codec).layout == "bytes":
        with open_store(cut) as store:  # the resumed run wrote a new segment, never over the old one
            assert store.generic_arrays("frames/encoded") == ["frames/encoded/0", "frames/encoded/1"]


@pytest.mark.parametrize("codec", CODECS)
def test_a_cache_of_another_codec_is_refused_or_replaced(codec: str, videos: list[ClipRecord],
                                                         tmp_path: Path) -> None:
    path = new_store(tmp_path, videos[:2])
    build_frame_cache(path, config(codec))
    for other in (c for c in CODECS if c != codec):
        with pytest.raises(StoreMismatchError, match=f"codec: '{codec}' \\(store\\) vs '{other}' \\(now\\).*--overwrite"):
            build_frame_cache(path, config(other))
    other = next(c for c in CODECS if c != codec)
    result = CliRunner().invoke(cli, ["cache-clips", str(path), "--size", "48x64", "--workers", "0", "--codec", other,
                                      "--overwrite", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["codec"] == other
    with open_store(path) as store:
        index = D.FrameCacheIndex.load(store)
        assert index is not None and index.codec == other and (index.count == FRAMES).all()
        old_arrays = {"pixels": "frames/data", "bytes": "frames/encoded_index"}[make_codec(codec).layout]
        assert not store.has(old_arrays) or make_codec(codec).layout == make_codec(other).layout


def test_another_jpeg_quality_is_another_cache(videos: list[ClipRecord], tmp_path: Path) -> None:
    path = new_store(tmp_path, videos[:1])
    first = FrameCacheConfig(codec="jpeg", quality=90, size=SIZE, workers=0)  # what the command below asks
    build_frame_cache(path, first)
    with pytest.raises(StoreMismatchError, match="quality: 90 \\(store\\) vs 75 \\(now\\)"):
        build_frame_cache(path, dataclasses.replace(first, quality=None))
    result = CliRunner().invoke(cli, ["cache-clips", str(path), "--size", "48x64", "--workers", "0",
                                      "--codec", "jpeg", "--quality", "90", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["skipped"] == 1  # the same settings resume


def test_a_cache_from_before_codecs_reads_as_raw(videos: list[ClipRecord], tmp_path: Path) -> None:
    """Caches written before the codec option carry no codec attributes: they are raw pixels."""
    path = new_store(tmp_path, videos[:1])
    build_frame_cache(path, config("raw"))
    import zarr

    group = zarr.open_group(str(path / "frames"), mode="r+")  # the store API merges attrs, never drops one
    group.attrs.put({k: v for k, v in group.attrs.asdict().items() if k not in ("codec", "quality")})
    with open_store(path) as store:
        assert "codec" not in store.get_attrs("frames")
        index = D.FrameCacheIndex.load(store)
        assert index is not None and index.codec == "raw"
    assert build_frame_cache(path, config("raw")).skipped == 1  # resumes: the same cache
    with pytest.raises(StoreMismatchError, match="codec: 'raw' \\(store\\) vs 'jpeg'"):
        build_frame_cache(path, config("jpeg"))


@pytest.mark.parametrize("codec", CODECS)
def test_disk_space_estimate(codec: str, videos: list[ClipRecord], tmp_path: Path,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The free-space check is the plan's estimate (cache_bytes, one rule): generous for the content,
    and for jpeg far below raw, so a disk with room for the jpeg cache but not for raw pixels takes
    the jpeg one."""
    from ccl_cache.extract import cache_bytes
    from ccl_cache.store import space

    cfg = config(codec)
    planned = np.full(CLIPS, FRAMES, np.int64)
    needed = cache_bytes(cfg, planned, ".zarr")
    raw_needed = cache_bytes(config("raw"), planned, ".zarr")
    if codec != "raw":
        assert needed < raw_needed
    many = np.full(100, 300, np.int64)  # at 128x171, past the fixed costs: the per-frame bytes count
    big = dataclasses.replace(cfg, size=(128, 171))
    assert cache_bytes(big, many, ".zarr") <= cache_bytes(dataclasses.replace(config("raw"), size=(128, 171)), many,
                                                          ".zarr")
    path = new_store(tmp_path, videos)
    real_usage = space.shutil.disk_usage
    for free, fits in ((needed - 1, False), (needed + 4096, True)):
        monkeypatch.setattr(space.shutil, "disk_usage",
                            lambda p, free=free: shutil._ntuple_diskusage(10**12, 10**12 - free, free))
        if fits:
            assert build_frame_cache(path, cfg).cached == CLIPS
        else:
            with pytest.raises(StoreError, match="free disk space.*--codec jpeg, a lower --quality"):
                build_frame_cache(path, cfg)
    monkeypatch.setattr(space.shutil, "disk_usage", real_usage)
    with open_store(path) as store:
        if make_codec(codec).layout == "bytes":
            written = int(store.array("frames/encoded_index")[:][:, 2].sum())
        else:
            written = CLIPS * FRAMES * SIZE[0] * SIZE[1] * 3
    assert written <= needed  # the estimate covered what this content took


def device_batches(path: Path, decode: str, device: str = "cpu") -> dict[str, object]:
    """Rows 0-3 (row 2 left out of the cache: read from its file) through a loader with
    ``decode``, finished on ``device``: the batch the trainer steps on."""
    dataset = D.ClipDataset(path, np.arange(CLIPS), spec=D.ClipSpec(frames=8, stride=2, size=32), seed=5,
                            decode=decode)
    sampler = torch.utils.data.BatchSampler(D.EpochSampler(CLIPS, seed=5), CLIPS, False)
    loader = D.make_loader(dataset, batch_sampler=sampler, workers=0, collate=D.collate_clips)
    batch = next(iter(loader))
    assert isinstance(batch["video"], D.EncodedClips) == (decode == "device")
    return dataset.finish(batch, device)


def store_with_an_uncached_row(path: Path, codec: str) -> Path:
    from ccl_cache.store.schema import FRAMES_COUNT

    build_frame_cache(path, config(codec))
    with open_store(path, "r+") as store:
        store.array(FRAMES_COUNT)[2:3] = np.array([0])  # row 2: not cached, training reads its file
    return path


@pytest.mark.parametrize("codec", CODECS)
def test_decoding_on_the_device_is_the_same_code_path_on_the_cpu(codec: str, videos: list[ClipRecord],
                                                                 tmp_path: Path) -> None:
    """``decode="device"`` on a CPU run: the workers hand over the cached windows encoded (pinnable
    bytes and the drawn crop), ``finish`` decodes the whole batch in one codec call and crops it;
    the batch equals the workers-decoded one bit for bit (same draws, same decoder), the row read
    from its file included."""
    path = store_with_an_uncached_row(new_store(tmp_path, videos), codec)
    on_workers = device_batches(path, "cpu")
    on_device = device_batches(path, "device")
    assert on_device["video"].shape == (CLIPS, 3, 8, 32, 32) and on_device["video"].dtype == torch.float32
    assert torch.equal(on_device["video"], on_workers["video"])
    assert torch.equal(on_device["row"], on_workers["row"]) and torch.equal(on_device["index"], on_workers["index"])
    dataset = D.ClipDataset(path, np.arange(CLIPS), spec=D.ClipSpec(frames=8, size=32), decode="device")
    item = dataset[(0, 0)]
    frames, crop = item["encoded"]
    assert "video" not in item and len(frames) == 8 and isinstance(crop, D.Crop)
    assert "video" in dataset[(0, 2)]  # the uncached row: decoded in the worker, as before


def test_decode_auto_is_the_device_on_cuda_with_a_jpeg_cache_only(videos: list[ClipRecord], tmp_path: Path) -> None:
    caches = {}
    for codec in ("raw", "jpeg"):
        path = new_store(tmp_path, videos[:1], name=codec)
        build_frame_cache(path, config(codec))
        with open_store(path) as store:
            caches[codec] = D.FrameCacheIndex.load(store)
    assert D.resolve_decode("auto", "cuda", caches["jpeg"]) == "device"
    assert D.resolve_decode("auto", "cuda:1", caches["raw"]) == "cpu"  # raw pixels: nothing to decode
    assert D.resolve_decode("auto", "cpu", caches["jpeg"]) == "cpu"  # the workers decode in parallel
    assert D.resolve_decode("auto", "cuda", None) == "cpu"  # no cache: frames come from the files
    assert D.resolve_decode("device", "cpu", caches["jpeg"]) == "device"
    assert D.resolve_decode("cpu", "cuda", caches["jpeg"]) == "cpu"
    with pytest.raises(ConfigError, match="decode 'gpu'"):
        D.resolve_decode("gpu", "cuda", caches["jpeg"])


@pytest.mark.parametrize("decode", ["auto", "device"])
def test_distill_trains_from_a_jpeg_cache(tmp_path: Path, decode: str) -> None:
    """``cache-clips --codec jpeg`` then ``distill --source cache``, one tiny epoch, with the media files
    moved away: every window came from the JPEG cache; decoded where ``--decode`` says (auto on a
    CPU: the workers), which config.yaml and the summary record; loader wait and device decoding
    are fractions of the steps' time in metrics.jsonl."""
    from fixtures_distill import make_store

    store = make_store(tmp_path)
    result = CliRunner().invoke(cli, ["cache-clips", str(store), "--size", "37x49", "--workers", "0",
                                      "--codec", "jpeg", "--quality", "90", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["codec"], summary["quality"], summary["failed"]) == ("jpeg", 90, {})
    shutil.move(str(tmp_path / "synth"), str(tmp_path / "moved"))  # the originals are gone
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["distill", str(store), "--out", str(out), "--method", "ccl", "--student", "small",
                                      "--student-opt", "width=8", "--epochs", "1", "--batch-size", "4", "--frames", "4",
                                      "--size", "32", "--workers", "0", "--device", "cpu", "--source", "cache",
                                      "--test-max-windows", "2", "--decode", decode, "--log-every", "1", "--quiet",
                                      "--json"])
    assert result.exit_code == 0, result.output
    run = json.loads(result.stdout)
    assert run["global_step"] > 0 and run["test"] is not None and run["embeddings"]["written"]
    resolved = {"auto": "cpu", "device": "device"}[decode]
    assert run["decode"] == resolved and f"decode: {resolved}" in (out / "config.yaml").read_text()
    steps = [line for line in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
             if line["kind"] == "train"]
    assert len(steps) == run["global_step"]
    for line in steps:
        assert 0.0 <= line["device_decode"] <= line["loader_wait"] <= 1.0
        if resolved == "cpu":
            assert line["device_decode"] == 0.0


@pytest.mark.gpu
@pytest.mark.parametrize("codec", CODECS)
def test_the_loader_decodes_on_cuda_like_on_cpu(codec: str, videos: list[ClipRecord], tmp_path: Path) -> None:
    """The trainer's device path on CUDA: the encoded batch pins, ``finish`` decodes it with nvJPEG
    (jpeg) and crops on the GPU; the clips match the CPU workers' up to the decoders' rounding."""
    path = store_with_an_uncached_row(new_store(tmp_path, videos), codec)
    dataset = D.ClipDataset(path, np.arange(CLIPS), spec=D.ClipSpec(frames=8, stride=2, size=32), seed=5,
                            decode="device")
    batch = D.collate_clips(dataset.__getitems__([(0, i) for i in range(CLIPS)]))
    pinned = batch["video"].pin_memory()
    assert pinned.data.is_pinned() and all(v.is_pinned() for v in pinned.ready.values())
    on_gpu = dataset.finish({**batch, "video": pinned}, "cuda")["video"]
    on_cpu = device_batches(path, "cpu")["video"]
    assert on_gpu.is_cuda and on_gpu.shape == on_cpu.shape
    # Normalised units: one 8-bit level is about 0.018. The GPU resizes in float, the CPU in uint8.
    assert (on_gpu.cpu() - on_cpu).abs().mean() < 0.05


@pytest.mark.gpu
def test_distill_on_cuda_decodes_a_jpeg_cache_on_the_device(tmp_path: Path) -> None:
    """``--decode auto`` on CUDA with a JPEG cache: the trainer decodes on the device and reports
    the loader wait and the device decoding as fractions of the steps' time."""
    from fixtures_distill import make_store

    store = make_store(tmp_path)
    assert CliRunner().invoke(cli, ["cache-clips", str(store), "--workers", "0", "--codec", "jpeg",
                                    "--quiet"]).exit_code == 0
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["distill", str(store), "--out", str(out), "--preset", "small", "--epochs", "1",
                                      "--workers", "2", "--device", "cuda", "--source", "cache", "--log-every", "1",
                                      "--test-max-windows", "2", "--quiet", "--json"])
    assert result.exit_code == 0, result.output
    run = json.loads(result.stdout)
    assert run["decode"] == "device" and run["device"].startswith("cuda")
    steps = [line for line in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
             if line["kind"] == "train"]
    assert steps and all(0.0 <= line["device_decode"] <= line["loader_wait"] <= 1.0 for line in steps)


@pytest.mark.gpu
@pytest.mark.parametrize("codec", CODECS)
def test_read_batch_decodes_on_cuda_like_on_cpu(codec: str, videos: list[ClipRecord], tmp_path: Path) -> None:
    """device="cuda": one batched decode (nvJPEG for jpeg) of every frame of the windows."""
    path = new_store(tmp_path, videos)
    build_frame_cache(path, config(codec))
    windows = [(0, 0), (1, 10), (2, 22), (3, 5)]
    with open_store(path) as store:
        index = D.FrameCacheIndex.load(store)
        assert index is not None
        on_cpu, times = index.read_batch(store, windows, 8, 1)
        on_gpu, gpu_times = index.read_batch(store, windows, 8, 1, device="cuda")
    assert on_gpu.is_cuda and on_gpu.shape == on_cpu.shape and on_gpu.dtype == torch.uint8
    np.testing.assert_array_equal(gpu_times, times)
    if make_codec(codec).lossless:
        assert torch.equal(on_gpu.cpu(), on_cpu)
    else:  # nvJPEG and libjpeg-turbo may round the IDCT and upsampling differently
        assert psnr(on_cpu.numpy(), on_gpu.cpu().numpy()) > 40.0
