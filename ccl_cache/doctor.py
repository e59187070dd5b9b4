"""What this machine can do for ccl-cache: library versions, GPUs, bfloat16 units, FAISS on the
GPU, cores, disk, memory and the FFmpeg codecs the media room decodes and ``synth`` encodes.

:func:`diagnose` returns one :class:`Check` per item, each with the fix where something is
missing, and says whether everything the CPU pipeline (extract → distill → index → retrieve on
your own videos) requires is present. It imports only what it must, so that it stays quick
(docs/performance.md has its time): PyAV (its codecs), h5py (HDF5's version) and numpy. torch and FAISS
are imported only where a GPU driver is present (:func:`ccl_cache.hardware.gpu_driver`), to list
the CUDA devices and FAISS's GPUs; without one, CUDA cannot be available, torch's CUDA build is
read from its ``torch/version.py`` and the versions of torch, torchvision, torchaudio, zarr and
FAISS from their installed metadata. CPU bfloat16 units come from /proc/cpuinfo
(:func:`ccl_cache.hardware.cpu_has_bf16`), and CUDA is not initialised when
``torch.cuda.is_available()`` says no.
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import importlib.util
import os
import re
import shutil
import sys
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from ccl_cache import hardware

__all__ = ["Check", "DECODERS", "Diagnosis", "ENCODERS", "MIN_FREE_DISK_GIB", "MIN_RAM_GIB", "diagnose"]

GIB = 1024 ** 3
MIN_FREE_DISK_GIB = 2.0  # below this the disk check warns (stores, frame caches, checkpoints)
MIN_RAM_GIB = 2.0  # below this the memory check warns (decoding workers, training batches)
MIN_PYTHON = (3, 10)  # pyproject's requires-python

# codec → (FFmpeg decoders that decode it without hardware, in FFmpeg's order of preference;
# required for the CPU pipeline). FFmpeg's own "av1" decoder needs hardware acceleration, so AV1
# counts only with dav1d or libaom.
DECODERS: dict[str, tuple[tuple[str, ...], bool]] = {
    "h264": (("h264",), True),
    "hevc": (("hevc",), False),
    "vp9": (("vp9", "libvpx-vp9"), False),
    "av1": (("libdav1d", "libaom-av1"), False),
    "aac": (("aac",), True),
    "opus": (("opus", "libopus"), False),
    "mp3": (("mp3float", "mp3"), False),
}
# The distributions that install the module ``faiss``, most common first.
FAISS_DISTS = ("faiss-cpu", "faiss-gpu-cu12", "faiss-gpu-cu11", "faiss-gpu", "faiss")
# The encoders ccl_cache.experiments.synth writes its mp4 files with (video, audio).
ENCODERS = ("libx264", "aac")

PYAV_WHEELS = ("install PyAV wheels from PyPI (they bundle FFmpeg with these decoders and encoders): "
               "pip install --force-reinstall --only-binary av av")
TORCH_FIX = ("pip install torch torchvision torchaudio (CPU-only wheels, much smaller: add "
             "--index-url https://download.pytorch.org/whl/cpu)")
NO_CUDA_FIX = "no CUDA device: distill runs on CPU; see README (Quick start: the demo) for expected CPU times"
CPU_TORCH_FIX = ("this torch is a CPU build: on a machine with an NVIDIA GPU install a CUDA build "
                 "(https://pytorch.org/get-started/locally/)")
FAISS_GPU_FIX = "pip install faiss-gpu-cu12 for GPU search (the project's [gpu] extra: pip install -e '.[gpu]')"
CPU_BF16_FIX = ("no AVX512-BF16/AMX units: training and extraction on this CPU stay in float32 "
                "(nothing to install; --amp bf16 is refused here)")
GPU_BF16_FIX = ("compute capability below 8.0: bfloat16 would be emulated, so --amp auto trains in float32 "
                "here (--amp fp16 is available) and image teachers extract in float16")


@dataclass(frozen=True)
class Check:
    """One item: its ``value`` (a version, a count, a size; None when it could not be read),
    whether it is ``ok``, whether the CPU pipeline ``required`` it, and the ``fix`` when not ok."""

    group: str  # python, media, gpu, machine: the table's sections
    name: str
    value: str | None
    ok: bool
    required: bool
    fix: str | None = None


@dataclass(frozen=True)
class Diagnosis:
    """Every check; ``ok`` when every required one passed."""

    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        return not self.missing_required

    @property
    def missing_required(self) -> list[str]:
        return [c.name for c in self.checks if c.required and not c.ok]

    @property
    def missing_optional(self) -> list[str]:
        return [c.name for c in self.checks if not c.required and not c.ok]

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "missing_required": self.missing_required,
                "missing_optional": self.missing_optional, "checks": [asdict(c) for c in self.checks]}


def _import(name: str) -> tuple[Any, str | None]:
    """The module, or None and why (a broken binary raises OSError or RuntimeError, not ImportError)."""
    try:
        return importlib.import_module(name), None
    except ModuleNotFoundError:
        return None, "not installed"
    except Exception as exc:  # noqa: BLE001  (any failure to import is the finding)
        return None, f"{type(exc).__name__}: {exc}"


def _dist_version(dist: str) -> tuple[str | None, str | None]:
    try:
        return importlib.metadata.version(dist), None
    except importlib.metadata.PackageNotFoundError:
        return None, "not installed"


def _installed(module: str, dists: tuple[str, ...]) -> tuple[str | None, str | None]:
    """The version of the installed ``module`` without importing it: from the metadata of the first
    of ``dists`` installed; a module installed without such metadata is imported for its
    ``__version__``. (None, why) where it is not installed."""
    try:
        if importlib.util.find_spec(module) is None:
            return None, "not installed"
    except (ImportError, ValueError):
        return None, "not installed"
    for dist in dists:
        version, _ = _dist_version(dist)
        if version is not None:
            return version, None
    found, why = _import(module)
    return (str(getattr(found, "__version__", "unknown")), None) if found is not None else (None, why)


def _torch_version_py() -> dict[str, Any]:
    """The literal assignments of the installed torch/version.py (``__version__``, with its local
    label such as "+cu130" that the wheel's metadata may lack; ``cuda``: the CUDA version torch
    was built for, None for a CPU build), read without importing torch; empty where it cannot be
    read."""
    try:
        spec = importlib.util.find_spec("torch")
        if spec is None or spec.origin is None:
            return {}
        tree = ast.parse(Path(spec.origin).with_name("version.py").read_text(encoding="utf-8"))
    except (ImportError, ValueError, OSError, SyntaxError):
        return {}
    found: dict[str, Any] = {}
    for node in tree.body:
        target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
        value = getattr(node, "value", None)
        if isinstance(target, ast.Name) and value is not None:
            try:
                found[target.id] = ast.literal_eval(value)
            except (ValueError, TypeError, SyntaxError):  # not a literal (a computed name)
                continue
    return found


def _torch_version() -> tuple[str | None, str | None]:
    """torch's ``__version__`` without importing it (its version.py, else its metadata)."""
    version = _torch_version_py().get("__version__")
    return (version, None) if isinstance(version, str) else _installed("torch", ("torch",))


def _torch_cuda_build() -> str | None:
    """``torch.version.cuda`` without importing torch; torch is imported where its version.py
    cannot be read (None where that fails too)."""
    facts = _torch_version_py()
    if "cuda" in facts:
        return facts["cuda"] if isinstance(facts["cuda"], str) else None
    torch, _ = _import("torch")
    return torch.version.cuda if torch is not None else None


@lru_cache(maxsize=1)
def _minimums() -> dict[str, str]:
    """``{distribution: minimum version}`` from ccl-cache's installed requirements (``x>=v``);
    empty when ccl-cache runs from a source tree without metadata."""
    try:
        requires = importlib.metadata.requires("ccl-cache") or []
    except importlib.metadata.PackageNotFoundError:
        return {}
    found = (re.match(r"^([A-Za-z0-9_.-]+)\s*>=\s*([0-9][^,;\s]*)\s*$", r) for r in requires)
    return {m.group(1).lower(): m.group(2) for m in found if m}


def _release(version: str) -> tuple[int, ...]:
    """The numeric release of a version ("2.14.1+cu130" → (2, 14, 1))."""
    match = re.match(r"\d+(\.\d+)*", version)
    return tuple(int(p) for p in match.group().split(".")) if match else ()


def _package(name: str, version: str | None, why: str | None, fix: str, dist: str) -> Check:
    if version is None:
        return Check("python", name, why, False, True, fix)
    minimum = _minimums().get(dist)
    if minimum and _release(version) < _release(minimum):
        return Check("python", name, version, False, True,
                     f"ccl-cache needs {dist}>={minimum}: pip install -U '{dist}>={minimum}'")
    return Check("python", name, version, True, True)


def _python_checks(gpu: bool) -> tuple[list[Check], dict[str, Any], dict[str, bool]]:
    """Python and the libraries; the modules imported on the way (None where missing or not
    imported); which of torch and FAISS are installed. torch and FAISS are imported only where
    ``gpu`` (a GPU driver is present)."""
    python = ".".join(map(str, sys.version_info[:3]))
    new_enough = sys.version_info[:2] >= MIN_PYTHON
    checks = [Check("python", "python", python, new_enough, True,
                    None if new_enough else "ccl-cache needs Python 3.10 or newer")]
    # torch first where it is imported: it imports numpy anyway, and FAISS and h5py load faster after it.
    imported = {name: _import(name) for name in (*(("torch", "faiss") if gpu else ()), "numpy", "av", "h5py")}
    modules = {name: imported.get(name, (None, None))[0] for name in ("torch", "numpy", "av", "h5py", "faiss")}
    numpy, av, h5py = modules["numpy"], modules["av"], modules["h5py"]

    def version(name: str, dists: tuple[str, ...]) -> tuple[str | None, str | None]:
        if name not in imported:
            return _torch_version() if name == "torch" else _installed(name, dists)
        module, why = imported[name]
        return (module.__version__ if module is not None else None), why

    def why(name: str) -> str | None:
        return imported[name][1]

    torch_version, faiss_version = version("torch", ("torch",)), version("faiss", FAISS_DISTS)
    checks.append(_package("torch", *torch_version, TORCH_FIX, "torch"))
    for dist in ("torchvision", "torchaudio"):  # metadata only: importing torchvision costs seconds
        checks.append(_package(dist, *_dist_version(dist), TORCH_FIX, dist))
    checks.append(_package("numpy", numpy and numpy.__version__, why("numpy"), "pip install numpy", "numpy"))
    checks.append(_package("PyAV", av and av.__version__, why("av"), "pip install av", "av"))
    checks.append(_package("zarr", *_dist_version("zarr"), "pip install 'zarr>=3.0'", "zarr"))
    h5 = h5py and f"{h5py.__version__} (HDF5 {h5py.version.hdf5_version})"
    checks.append(_package("h5py", h5, why("h5py"), "pip install h5py", "h5py"))
    checks.append(_package("FAISS", *faiss_version, "pip install faiss-cpu", "faiss-cpu"))
    present = {"torch": torch_version[0] is not None, "faiss": faiss_version[0] is not None}
    return checks, modules, present


def _has_codec(av: Any, name: str, mode: str) -> bool:
    """Whether this FFmpeg has the decoder (``mode`` "r") or encoder ("w") called ``name``."""
    if name not in av.codecs_available:
        return False
    try:
        av.Codec(name, mode)
    except ValueError:  # UnknownCodecError: the name exists only in the other direction
        return False
    return True


def _media_checks(av: Any) -> list[Check]:
    if av is None:
        missing = "install PyAV first: pip install av"
        return [Check("media", "FFmpeg", None, False, True, missing)] + [
            Check("media", f"decode {codec}", None, False, required, missing)
            for codec, (_, required) in DECODERS.items()] + [
            Check("media", f"encode {name}", None, False, False, missing) for name in ENCODERS]
    libs = ", ".join(f"{lib} {'.'.join(map(str, v))}" for lib, v in sorted(av.library_versions.items()))
    ffmpeg = getattr(av, "ffmpeg_version_info", None)
    checks = [Check("media", "FFmpeg", f"{ffmpeg} ({libs})" if ffmpeg else libs, True, True)]
    for codec, (names, required) in DECODERS.items():
        found = next((n for n in names if _has_codec(av, n, "r")), None)
        if found:
            checks.append(Check("media", f"decode {codec}", found, True, required))
            continue
        why = "" if required else f"clips in {codec} fail extraction as 'unsupported'; "
        if codec == "av1" and _has_codec(av, "av1", "r"):
            why += "FFmpeg's own av1 decoder needs hardware acceleration; "
        checks.append(Check("media", f"decode {codec}", "missing", False, required, why + PYAV_WHEELS))
    for name in ENCODERS:
        ok = _has_codec(av, name, "w")
        fix = None if ok else f"ccl-cache synth and demo write {name} (your own videos do not need it); {PYAV_WHEELS}"
        checks.append(Check("media", f"encode {name}", name if ok else "missing", ok, False, fix))
    return checks


def _gpu_checks(torch: Any, faiss: Any, gpu: bool, present: dict[str, bool]) -> list[Check]:
    """CUDA devices, their bfloat16 and FAISS's GPUs. Without a GPU driver (``gpu`` False) torch
    and FAISS are not imported: no device can be there, and torch's CUDA build is read from its
    files."""
    if not present["torch"]:
        return [Check("gpu", "CUDA", None, False, False, "install torch first: " + TORCH_FIX)]
    checks: list[Check] = []
    cuda = gpu and torch.cuda.is_available()  # nothing below touches CUDA when this is False
    if not cuda:
        build = torch.version.cuda if gpu else _torch_cuda_build()
        value = f"no device (torch built for CUDA {build})" if build else "no device (CPU build of torch)"
        checks.append(Check("gpu", "CUDA", value, False, False, NO_CUDA_FIX + ("" if build else "; " + CPU_TORCH_FIX)))
    for i in range(torch.cuda.device_count() if cuda else 0):
        props = torch.cuda.get_device_properties(i)
        checks.append(Check("gpu", f"cuda:{i}", f"{props.name}, {props.total_memory / GIB:.1f} GiB, compute "
                                               f"capability {props.major}.{props.minor}", True, False))
        bf16 = hardware.cuda_has_bf16(i)
        checks.append(Check("gpu", f"cuda:{i} bf16", "yes" if bf16 else "no (emulated)", bf16, False,
                            None if bf16 else GPU_BF16_FIX))
    if not present["faiss"]:
        checks.append(Check("gpu", "FAISS GPUs", None, False, False, "install FAISS first: pip install faiss-cpu"))
        return checks
    # Without a GPU driver FAISS sees no GPU whatever its build: it stays unimported.
    get_num_gpus = getattr(faiss, "get_num_gpus", None) if gpu else (lambda: 0)  # absent from some faiss-cpu builds
    gpus = int(get_num_gpus()) if get_num_gpus is not None else 0
    fix = None if gpus else (FAISS_GPU_FIX if cuda else f"{FAISS_GPU_FIX}, on a machine with a CUDA GPU; "
                                                         "search runs on the CPU here")
    checks.append(Check("gpu", "FAISS GPUs", str(gpus) if get_num_gpus is not None else "no GPU support",
                        bool(gpus), False, fix))
    return checks


def _available_ram() -> int | None:
    """Bytes of memory available to this process: the system's MemAvailable, capped by a cgroup v2
    limit (a container's share); None where neither can be read."""
    available = None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            available = next((int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")), None)
    except (OSError, ValueError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            share = int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text())
            available = share if available is None else min(available, share)
    except (OSError, ValueError):
        pass
    return available


def _machine_checks(torch_present: bool, path: Path) -> list[Check]:
    cores = hardware.usable_cores()
    checks = [Check("machine", "CPU cores", f"{cores} usable of {os.cpu_count()}", cores >= 1, True)]
    if not torch_present:
        checks.append(Check("machine", "CPU bf16", None, False, False, "install torch first: " + TORCH_FIX))
    else:
        bf16 = hardware.cpu_has_bf16()
        checks.append(Check("machine", "CPU bf16", "yes (AVX512-BF16/AMX): --amp bf16 speeds up CPU training"
                            if bf16 else "no", bf16, False, None if bf16 else CPU_BF16_FIX))
    try:
        free = shutil.disk_usage(path).free
    except OSError as exc:
        checks.append(Check("machine", "free disk", None, False, False, f"{path}: {exc}; pass --path an existing folder"))
    else:
        low = free < MIN_FREE_DISK_GIB * GIB
        checks.append(Check("machine", "free disk", f"{free / GIB:.1f} GiB on {path.resolve()}", not low, False,
                            f"under {MIN_FREE_DISK_GIB:g} GiB free: stores, frame caches and checkpoints grow with "
                            "the dataset; free some space or check the folder you will write to with --path"
                            if low else None))
    ram = _available_ram()
    low = ram is not None and ram < MIN_RAM_GIB * GIB
    checks.append(Check("machine", "available RAM", None if ram is None else f"{ram / GIB:.1f} GiB",
                        ram is not None and not low, False,
                        "could not read /proc/meminfo" if ram is None else
                        f"under {MIN_RAM_GIB:g} GiB available: use fewer --workers and a smaller --batch-size"
                        if low else None))
    return checks


def diagnose(path: str | Path = ".") -> Diagnosis:
    """Every check of this machine; ``path``: the folder whose free disk space is reported."""
    gpu = hardware.gpu_driver() is not None
    checks, modules, present = _python_checks(gpu)
    checks += _media_checks(modules["av"])
    checks += _gpu_checks(modules["torch"], modules["faiss"], gpu, present)
    checks += _machine_checks(present["torch"], Path(path))
    return Diagnosis(tuple(checks))
