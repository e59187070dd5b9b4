"""`ccl-cache doctor`: every check with a value or a fix, the fixes for what is missing, and the
exit status (1 only when the CPU pipeline lacks something it requires)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import faiss
import pytest
import torch
from click.testing import CliRunner

from ccl_cache import doctor, hardware
from ccl_cache_cli.main import cli

LIBRARIES = {"python", "torch", "torchvision", "torchaudio", "numpy", "PyAV", "zarr", "h5py", "FAISS"}
MEDIA = {"FFmpeg", *(f"decode {c}" for c in doctor.DECODERS), *(f"encode {e}" for e in doctor.ENCODERS)}
MACHINE = {"CPU cores", "CPU bf16", "free disk", "available RAM"}


def _doctor(*args: str) -> tuple[int, dict[str, Any]]:
    result = CliRunner().invoke(cli, ["doctor", "--json", *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, json.loads(result.stdout)


def _checks(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {check["name"]: check for check in report["checks"]}


def _assert_value_or_fix(report: dict[str, Any]) -> None:
    for check in report["checks"]:
        assert check["value"] or check["fix"], check
        assert check["ok"] or check["fix"], f"{check['name']} is not ok and has no fix"


def test_the_real_run_on_this_machine_exits_0_without_importing_what_it_does_not_need() -> None:
    # PyAV's wheels carry the h264 and aac decoders; torchvision, torchaudio and zarr are read from
    # their metadata (importing torchvision alone costs seconds).
    code = ("import sys\nfrom ccl_cache_cli.main import main\nstatus = 0\n"
            "try:\n    main(['doctor', '--json'])\nexcept SystemExit as exc:\n    status = exc.code\n"
            "heavy = [m for m in ('torchvision', 'torchaudio', 'zarr') if m in sys.modules]\n"
            "print('STATUS', status, 'HEAVY', ','.join(heavy) or '-', file=sys.stderr)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stderr.strip().splitlines()[-1] == "STATUS 0 HEAVY -", run.stderr
    report = json.loads(run.stdout)
    assert report["ok"] is True and report["missing_required"] == []
    checks = _checks(report)
    assert LIBRARIES | MEDIA | MACHINE | {"FAISS GPUs"} <= set(checks)
    assert "CUDA" in checks or "cuda:0" in checks
    _assert_value_or_fix(report)
    assert checks["decode h264"]["ok"] and checks["decode aac"]["ok"]
    assert "HDF5" in checks["h5py"]["value"] and "libavcodec" in checks["FFmpeg"]["value"]
    assert {name for name, c in checks.items() if c["required"]} >= LIBRARIES | {"decode h264", "decode aac"}


def test_the_table_goes_to_stderr() -> None:
    result = CliRunner().invoke(cli, ["doctor"])
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert "decode h264" in result.stderr and "everything the CPU pipeline requires is present" in result.stderr


def test_a_missing_required_decoder_exits_1_with_the_pyav_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    has = doctor._has_codec
    monkeypatch.setattr(doctor, "_has_codec", lambda av, name, mode: name != "h264" and has(av, name, mode))
    status, report = _doctor()
    assert status == 1 and report["missing_required"] == ["decode h264"]
    fix = _checks(report)["decode h264"]["fix"]
    assert "install PyAV wheels from PyPI (they bundle FFmpeg with these decoders" in fix
    _assert_value_or_fix(report)
    result = CliRunner().invoke(cli, ["doctor"])
    assert result.exit_code == 1 and "required, missing: decode h264" in result.stderr


def test_missing_optional_decoders_say_what_fails_and_exit_0(monkeypatch: pytest.MonkeyPatch) -> None:
    has = doctor._has_codec
    gone = {"hevc", "libdav1d", "libaom-av1"}  # FFmpeg's own av1 decoder stays: it needs hardware
    monkeypatch.setattr(doctor, "_has_codec", lambda av, name, mode: name not in gone and has(av, name, mode))
    status, report = _doctor()
    checks = _checks(report)
    assert status == 0 and {"decode hevc", "decode av1"} <= set(report["missing_optional"])
    assert "clips in hevc fail extraction as 'unsupported'" in checks["decode hevc"]["fix"]
    assert "needs hardware acceleration" in checks["decode av1"]["fix"]
    assert "install PyAV wheels from PyPI" in checks["decode av1"]["fix"]


def test_a_missing_synth_encoder_is_optional(monkeypatch: pytest.MonkeyPatch) -> None:
    has = doctor._has_codec
    monkeypatch.setattr(doctor, "_has_codec", lambda av, name, mode: not (name == "libx264" and mode == "w")
                        and has(av, name, mode))
    status, report = _doctor()
    assert status == 0 and "encode libx264" in report["missing_optional"]
    assert "ccl-cache synth and demo write libx264" in _checks(report)["encode libx264"]["fix"]


def test_no_cuda_names_the_cpu_fix_and_does_not_touch_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    def touched(*args: object, **kwargs: object) -> None:
        raise AssertionError("CUDA was queried although torch.cuda.is_available() is False")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name in ("device_count", "get_device_properties", "init"):
        monkeypatch.setattr(torch.cuda, name, touched)
    monkeypatch.setattr(hardware, "cuda_has_bf16", touched)
    monkeypatch.setattr(torch.version, "cuda", None)
    status, report = _doctor()
    checks = _checks(report)
    assert status == 0 and "CUDA" in report["missing_optional"]
    assert checks["CUDA"]["fix"].startswith("no CUDA device: distill runs on CPU; see README")
    assert "this torch is a CPU build" in checks["CUDA"]["fix"]
    assert "on a machine with a CUDA GPU" in checks["FAISS GPUs"]["fix"]


def test_a_gpu_without_faiss_gpu_and_bf16_gets_their_fixes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: SimpleNamespace(
        name="Tesla T4", total_memory=15 * 1024 ** 3, major=7, minor=5))
    monkeypatch.setattr(hardware, "cuda_has_bf16", lambda device=None: False)
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 0, raising=False)
    status, report = _doctor()
    checks = _checks(report)
    assert status == 0 and "CUDA" not in checks
    assert checks["cuda:0"] == {"group": "gpu", "name": "cuda:0", "value": "Tesla T4, 15.0 GiB, compute capability 7.5",
                                "ok": True, "required": False, "fix": None}
    assert checks["cuda:0 bf16"]["fix"] == doctor.GPU_BF16_FIX
    assert checks["FAISS GPUs"]["fix"] == doctor.FAISS_GPU_FIX
    assert "pip install faiss-gpu-cu12 for GPU search (the project's [gpu] extra" in doctor.FAISS_GPU_FIX
    monkeypatch.delattr(faiss, "get_num_gpus")  # a faiss-cpu build without it
    assert _checks(_doctor()[1])["FAISS GPUs"]["value"] == "no GPU support"
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1, raising=False)
    assert _checks(_doctor()[1])["FAISS GPUs"]["ok"]


def test_missing_libraries_are_required_and_their_dependants_say_so(monkeypatch: pytest.MonkeyPatch) -> None:
    real = doctor._import
    monkeypatch.setattr(doctor, "_import", lambda name: (None, "not installed") if name in ("av", "faiss")
                        else real(name))
    status, report = _doctor()
    checks = _checks(report)
    assert status == 1
    assert {"PyAV", "FAISS", "FFmpeg", "decode h264", "decode aac"} <= set(report["missing_required"])
    assert checks["FAISS"]["fix"] == "pip install faiss-cpu" and checks["PyAV"]["value"] == "not installed"
    assert checks["decode hevc"]["fix"].startswith("install PyAV first")
    assert checks["FAISS GPUs"]["fix"].startswith("install FAISS first")
    _assert_value_or_fix(report)


def test_a_library_older_than_required_names_the_upgrade(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(doctor, "_minimums", lambda: {"zarr": "99.0"})
    status, report = _doctor()
    assert status == 1 and report["missing_required"] == ["zarr"]
    assert _checks(report)["zarr"]["fix"] == "ccl-cache needs zarr>=99.0: pip install -U 'zarr>=99.0'"
    assert doctor._release("2.14.1+cu130") == (2, 14, 1) and doctor._release("3.0") < doctor._release("3.0.1")


def test_low_disk_and_memory_are_warnings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(doctor.shutil, "disk_usage", lambda path: SimpleNamespace(free=1024 ** 3))
    monkeypatch.setattr(doctor, "_available_ram", lambda: 1024 ** 3)
    status, report = _doctor("--path", str(tmp_path))
    checks = _checks(report)
    assert status == 0 and {"free disk", "available RAM"} <= set(report["missing_optional"])
    assert checks["free disk"]["value"] == f"1.0 GiB on {tmp_path.resolve()}"
    assert "--path" in checks["free disk"]["fix"] and "--workers" in checks["available RAM"]["fix"]


def test_a_path_that_is_not_there_is_refused(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["doctor", "--path", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "does not exist" in result.output
