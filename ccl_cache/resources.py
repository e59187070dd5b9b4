"""Resource bounds: a user number that sizes an allocation is checked against the machine's
memory before anything is allocated, and refused with the option's valid range
(docs/reliability.md, "Resource bounds").

Light on purpose (no torch, numpy or store imports): configs of every room import it, decode
workers included.
"""

from __future__ import annotations

import os

from ccl_cache.errors import ConfigError


def available_memory() -> int:
    """Bytes of memory available for new allocations (MemAvailable; physical memory elsewhere)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _show(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"


def check_count_fits(option: str, value: int, item_bytes: int, item: str, *, low: int = 1, fix: str) -> None:
    """Refuse ``option=value`` when ``value`` items of ``item_bytes`` each exceed the memory
    available now, naming the range that fits (``low`` to the most that fit) or, when not even
    ``low`` items fit, ``fix`` (what makes one item smaller).

    The bound refuses only what cannot be allocated even once: a run needs more than its largest
    buffer (copies, prefetched batches, activations), so passing it does not promise the run fits.
    """
    budget = available_memory()
    need = int(value) * int(item_bytes)
    if need <= budget:
        return
    most = budget // max(1, int(item_bytes))
    head = (f"{option}={value}: {value} {item} ({_show(item_bytes)} each) need {_show(need)}, more than the "
            f"{_show(budget)} of memory available")
    if most < low:
        raise ConfigError(f"{head}; even {low} would not fit: {fix}")
    raise ConfigError(f"{head}; give {option} {low} to {most}, or {fix}")
