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


def _run_doctor_in_a_subprocess(driver: str | None) -> tuple[dict[str, Any], str]:
    """``doctor --json`` in a fresh interpreter where :func:`hardware.gpu_driver` answers
    ``driver``; the report and the heavy modules that were imported."""
    code = ("import sys\nfrom ccl_cache import hardware\n"
            f"hardware.gpu_driver = lambda: {driver!r}\n"
            "from ccl_cache_cli.main import main\nstatus = 0\n"
            "try:\n    main(['doctor', '--json'])\nexcept SystemExit as exc:\n    status = exc.code\n"
            "heavy = [m for m in ('torch', 'faiss', 'torchvision', 'torchaudio', 'zarr') if m in sys.modules]\n"
            "print('STATUS', status, 'HEAVY', ','.join(heavy) or '-', file=sys.stderr)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("STATUS 0 HEAVY "), run.stderr
    return json.loads(run.stdout), last.removeprefix("STATUS 0 HEAVY ")


def test_the_real_run_on_this_machine_exits_0_without_importing_what_it_does_not_need() -> None:
    # PyAV's wheels carry the h264 and aac decoders; torchvision, torchaudio and zarr are read from
    # their metadata (importing torchvision alone costs seconds). Without a GPU driver neither
    # torch nor FAISS is imported (importing torch is most of doctor's time where it happens).
    report, heavy = _run_doctor_in_a_subprocess(None)
    assert heavy == "-"
    assert report["ok"] is True and report["missing_required"] == []
    checks = _checks(report)
    assert LIBRARIES | MEDIA | MACHINE | {"FAISS GPUs", "CUDA"} <= set(checks)
    _assert_value_or_fix(report)
    assert checks["decode h264"]["ok"] and checks["decode aac"]["ok"]
    assert "HDF5" in checks["h5py"]["value"] and "libavcodec" in checks["FFmpeg"]["value"]
    assert {name for name, c in checks.items() if c["required"]} >= LIBRARIES | {"decode h264", "decode aac"}
    # What is read without importing is what the imports say.
    assert checks["torch"]["value"] == torch.__version__ and checks["FAISS"]["value"] == faiss.__version__
    build = f"torch built for CUDA {torch.version.cuda}" if torch.version.cuda else "CPU build of torch"
    assert checks["CUDA"]["value"] == f"no device ({build})"
    assert checks["CPU bf16"]["ok"] is hardware.cpu_has_bf16()


def test_with_a_driver_torch_and_faiss_answer_and_the_report_keeps_its_keys() -> None:
    # A driver (real or not: torch then finds no device) makes doctor ask torch and FAISS; the
    # report has the same keys and, without a usable GPU, the same checks as without a driver.
    with_driver, heavy = _run_doctor_in_a_subprocess("/dev/nvidiactl")
    without, _ = _run_doctor_in_a_subprocess(None)
    assert {"torch", "faiss"} <= set(heavy.split(",")) and not {"torchvision", "torchaudio", "zarr"} & set(heavy.split(","))
    assert set(with_driver) == set(without) == {"ok", "missing_required", "missing_optional", "checks"}
    for report in (with_driver, without):
        assert all(set(c) == {"group", "name", "value", "ok", "required", "fix"} for c in report["checks"])
    if not torch.cuda.is_available():
        changing = {"free disk", "available RAM"}  # the machine moves between the two runs
        assert ([c for c in with_driver["checks"] if c["name"] not in changing]
                == [c for c in without["checks"] if c["name"] not in changing])


def test_torch_cuda_build_and_version_are_read_without_importing_torch() -> None:
    assert doctor._torch_cuda_build() == torch.version.cuda
    assert doctor._torch_version() == (torch.__version__, None)
    assert doctor._installed("faiss", doctor.FAISS_DISTS) == (faiss.__version__, None)
    assert doctor._installed("no_such_module_here", ("no-such-dist",)) == (None, "not installed")


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


def _no_cuda_queries(monkeypatch: pytest.MonkeyPatch) -> None:
    def touched(*args: object, **kwargs: object) -> None:
        raise AssertionError("CUDA was queried although it is not available")

    for name in ("device_count", "get_device_properties", "init"):
        monkeypatch.setattr(torch.cuda, name, touched)
    monkeypatch.setattr(hardware, "cuda_has_bf16", touched)


def test_no_cuda_names_the_cpu_fix_and_does_not_touch_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    # A driver, but a CPU build of torch: torch says no, and nothing else touches CUDA.
    _no_cuda_queries(monkeypatch)
    monkeypatch.setattr(hardware, "gpu_driver", lambda: "/dev/nvidiactl")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)
    status, report = _doctor()
    checks = _checks(report)
    assert status == 0 and "CUDA" in report["missing_optional"]
    assert checks["CUDA"]["value"] == "no device (CPU build of torch)"
    assert checks["CUDA"]["fix"].startswith("no CUDA device: distill runs on CPU; see README")
    assert "this torch is a CPU build" in checks["CUDA"]["fix"]
    assert "on a machine with a CUDA GPU" in checks["FAISS GPUs"]["fix"]


def test_without_a_driver_torch_is_not_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_cuda_queries(monkeypatch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: (_ for _ in ()).throw(AssertionError("torch asked")))
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: (_ for _ in ()).throw(AssertionError("FAISS asked")),
                        raising=False)
    monkeypatch.setattr(hardware, "gpu_driver", lambda: None)
    monkeypatch.setattr(doctor, "_torch_version_py", lambda: {"__version__": "2.9.0+cu128", "cuda": "12.8"})
    status, report = _doctor()
    checks = _checks(report)
    assert status == 0 and checks["torch"]["value"] == "2.9.0+cu128"
    assert checks["CUDA"]["value"] == "no device (torch built for CUDA 12.8)"
    assert checks["CUDA"]["fix"] == doctor.NO_CUDA_FIX
    assert checks["FAISS GPUs"]["value"] == "0" and "on a machine with a CUDA GPU" in checks["FAISS GPUs"]["fix"]
    monkeypatch.setattr(doctor, "_torch_version_py", lambda: {"__version__": "2.9.0+cpu", "cuda": None})
    checks = _checks(_doctor()[1])
    assert checks["CUDA"]["value"] == "no device (CPU build of torch)"
    assert "this torch is a CPU build" in checks["CUDA"]["fix"]


def test_a_gpu_driver_is_seen_in_its_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(hardware.sys, "platform", "linux")
    monkeypatch.setattr(hardware.shutil, "which", lambda name: None)
    monkeypatch.setattr(hardware, "GPU_DRIVER_PATHS", (str(tmp_path / "version"), str(tmp_path / "nvidiactl")))
    assert hardware.gpu_driver() is None
    (tmp_path / "nvidiactl").touch()
    assert hardware.gpu_driver() == str(tmp_path / "nvidiactl")
    (tmp_path / "nvidiactl").unlink()
    monkeypatch.setattr(hardware.shutil, "which", lambda name: "/usr/bin/nvidia-smi" if name == "nvidia-smi" else None)
    assert hardware.gpu_driver() == "/usr/bin/nvidia-smi"
    monkeypatch.setattr(hardware.sys, "platform", "win32")  # no /proc or /dev to look at: torch is asked
    assert hardware.gpu_driver() == "unknown"


@pytest.mark.parametrize("cpuinfo, bf16", [
    ("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512bw\n", False),  # AVX-512 alone emulates bfloat16
    ("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 avx512_vnni\n", True),
    ("processor\t: 0\nflags\t\t: fpu avx512f amx_bf16 amx_tile\n", True),
    ("processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n", True),  # ARM
    ("processor\t: 0\nFeatures\t: fp asimd\n", False),
])
def test_cpu_bf16_units_come_from_cpuinfo(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, cpuinfo: str,
                                         bf16: bool) -> None:
    (tmp_path / "cpuinfo").write_text(cpuinfo)
    monkeypatch.setattr(hardware, "CPUINFO", str(tmp_path / "cpuinfo"))
    assert hardware.cpu_has_bf16() is bf16


def test_missing_libraries_are_required_and_their_dependants_say_so(monkeypatch: pytest.MonkeyPatch) -> None:
    real, installed = doctor._import, doctor._installed
    monkeypatch.setattr(doctor, "_import", lambda name: (None, "not installed") if name in ("av", "faiss")
                        else real(name))
    monkeypatch.setattr(doctor, "_installed", lambda name, dists: (None, "not installed") if name == "faiss"
                        else installed(name, dists))
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
