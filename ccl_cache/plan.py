"""The plan of a long job (``extract``, ``cache-clips``, ``distill``): what the whole run will take
before it starts — clips, bytes on disk and in RAM by item, against what the machine has, and the
time projected from a short timed probe of its first clips (:class:`Probe`) — and the refusal,
naming the options that make it fit, when it cannot hold it.

Light on purpose (no torch or store imports): the rooms build a :class:`Plan`, the CLI renders it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ccl_cache.errors import ConfigError
from ccl_cache.store import space


Clock = Callable[[], float]
"""Seconds from an arbitrary origin (``time.perf_counter``); probes take one so tests can pass theirs."""


@dataclass(frozen=True)
class Probe:
    """A short timed run of a job's first items, and the whole run's time projected from it.

    ``stages``: seconds per unit (a clip, a training step) by stage, in the order they run;
    ``parallel``: the stages the job's ``workers`` processes run (side by side, and alongside the
    other stages, which run in the main process); ``timed``: units the probe timed; ``units``: units
    of the whole run. An estimate: the first clips stand for all of them, and what the probe
    leaves out (``leaves_out``) is not counted.
    """

    unit: str  # "clip" or "step"
    timed: int
    stages: dict[str, float]
    parallel: tuple[str, ...]
    workers: int
    units: int
    leaves_out: str = ""

    @property
    def per_unit(self) -> float:
        """Seconds per unit when the stages overlap: the workers' share of the parallel stages, or
        the main process's stages, whichever is slower (all of them in turn with no workers)."""
        side = sum(v for k, v in self.stages.items() if k in self.parallel)
        main = sum(v for k, v in self.stages.items() if k not in self.parallel)
        return max(side / self.workers, main) if self.workers > 0 else side + main

    @property
    def seconds(self) -> float:
        return self.per_unit * self.units

    def describe(self) -> str:
        stages = " + ".join(f"{name} {_short(seconds)}" for name, seconds in self.stages.items())
        overlap = (f", {'/'.join(self.parallel)} over {self.workers} workers alongside the rest" if self.workers > 0
                   and self.parallel else "")
        out = (f"estimate from timing {self.timed} {self.unit}(s): {stages} per {self.unit}{overlap} -> "
               f"{_short(self.per_unit)} per {self.unit} x {self.units} {self.unit}s")
        return out + (f"; not counted: {self.leaves_out}" if self.leaves_out else "")

    def as_dict(self) -> dict[str, Any]:
        return {"unit": self.unit, "timed": self.timed, "stages": dict(self.stages), "parallel": list(self.parallel),
                "workers": self.workers, "units": self.units, "per_unit": self.per_unit, "seconds": self.seconds,
                "leaves_out": self.leaves_out}


def _short(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


@dataclass(frozen=True)
class Plan:
    """What one run will take. ``disk`` and ``ram``: bytes by item (e.g. "store", "cache",
    "checkpoints"; "teacher arrays"); ``free_disk``/``available_ram`` what the machine has
    (None = not measured); ``seconds``: the estimated run time, or None when not estimated;
    ``probe``: the timed probe it comes from (None: not probed, ``--no-probe``).
    ``disk_fix``/``ram_fix``: the options that make the run smaller, for the refusal."""

    command: str
    path: str
    clips: int
    disk: dict[str, int] = field(default_factory=dict)
    ram: dict[str, int] = field(default_factory=dict)
    free_disk: int | None = None
    available_ram: int | None = None
    ram_budget: int | None = None  # the share of available_ram the items may take
    seconds: float | None = None
    probe: Probe | None = None
    notes: tuple[str, ...] = ()
    disk_fix: str = ""
    ram_fix: str = ""

    @property
    def disk_bytes(self) -> int:
        return sum(self.disk.values())

    @property
    def ram_bytes(self) -> int:
        return sum(self.ram.values())

    def fits_disk(self) -> bool:
        return self.free_disk is None or self.disk_bytes <= self.free_disk

    def fits_ram(self) -> bool:
        budget = self.ram_budget if self.ram_budget is not None else self.available_ram
        return budget is None or self.ram_bytes <= budget

    def check(self) -> None:
        """Refuse the run (StoreError for the disk, ConfigError for RAM) when it cannot fit."""
        if not self.fits_disk():
            space.check_free_space(self.path, self.disk_bytes, self.disk_fix)
        if not self.fits_ram():
            budget = self.ram_budget if self.ram_budget is not None else self.available_ram
            raise ConfigError(
                f"{self.command}: {self.path} needs about {space.human_bytes(self.ram_bytes)} of RAM "
                f"({_items(self.ram)}) but {space.human_bytes(budget or 0)} may be used; {self.ram_fix}"
            )

    def as_dict(self) -> dict[str, Any]:
        return {
            "command": self.command, "path": self.path, "clips": self.clips,
            "disk": dict(self.disk), "disk_bytes": self.disk_bytes, "free_disk": self.free_disk,
            "ram": dict(self.ram), "ram_bytes": self.ram_bytes, "available_ram": self.available_ram,
            "ram_budget": self.ram_budget, "seconds": self.seconds,
            "probe": None if self.probe is None else self.probe.as_dict(), "notes": list(self.notes),
            "fits": self.fits_disk() and self.fits_ram(),
        }  # fmt: skip

    def render(self) -> str:
        """The plan as a few lines for the console."""
        lines = [f"plan for {self.command} -> {self.path}: {self.clips} clips"]
        disk = f"  disk: {space.human_bytes(self.disk_bytes)}"
        if self.disk:
            disk += f" ({_items(self.disk)})"
        if self.free_disk is not None:
            disk += f"; {space.human_bytes(self.free_disk)} free" + ("" if self.fits_disk() else "  NOT ENOUGH")
        lines.append(disk)
        if self.ram:
            ram = f"  RAM: {space.human_bytes(self.ram_bytes)} ({_items(self.ram)})"
            if self.available_ram is not None:
                ram += f"; {space.human_bytes(self.available_ram)} available"
                if self.ram_budget is not None:
                    ram += f", {space.human_bytes(self.ram_budget)} may be used"
                ram += "" if self.fits_ram() else "  NOT ENOUGH"
            lines.append(ram)
        if self.seconds is None:
            lines.append("  time: not estimated")
        else:
            how = f" ({self.probe.describe()})" if self.probe is not None else ""
            lines.append(f"  time: {_duration(self.seconds)}{how}")
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


def _items(items: dict[str, int]) -> str:
    return ", ".join(f"{name} {space.human_bytes(count)}" for name, count in items.items())


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"about {hours} h {minutes:02d} min" if hours else f"about {minutes} min {secs:02d} s"


def with_probe(plan: Plan, probe: Callable[[], Probe | None], skipped: str) -> Plan:
    """``plan`` with the time of ``probe()`` (called only when the plan fits: a refused run is not
    timed); ``skipped`` is the note when it gives no time (None: the first items failed). A probe
    that raises leaves the plan without a time and says why in a note: the run itself meets the
    same problem and reports it as it does without a plan."""
    import dataclasses

    if not (plan.fits_disk() and plan.fits_ram()):
        return plan
    try:
        timed = probe()
    except Exception as exc:  # noqa: BLE001 - the estimate is optional; the plan's disk and RAM are not
        return dataclasses.replace(plan, notes=(*plan.notes, f"time: not estimated, the probe failed "
                                                f"({type(exc).__name__}: {exc})"))
    if timed is None:
        return dataclasses.replace(plan, notes=(*plan.notes, skipped))
    return dataclasses.replace(plan, seconds=timed.seconds, probe=timed)


def free_disk_at(path: str | Path) -> int:
    """Free bytes where ``path`` is (or will be, under its nearest existing folder); looked up
    through ``space`` so tests can patch it."""
    path = Path(path).resolve()
    while not path.parent.exists() and path.parent != path:
        path = path.parent
    return space.free_bytes(path)
