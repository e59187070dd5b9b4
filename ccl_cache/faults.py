"""Fault-injection points: a test pauses a real run at a named point, then interrupts it there.

Interrupting a run "after its fourth chunk" with a timer races the run itself (a fast machine
finishes first, a slow one has not started), so tests that kill or Ctrl-C a command ask it to
pause instead. The command is started with the environment variable ``CCL_CACHE_PAUSE`` set to
``<point>:<n>:<marker file>``; the n-th time the run passes ``pause_point(<point>)`` it writes its
pid to the marker file and sleeps until a signal ends or interrupts it. Unset (every user's run),
a pause point costs one dictionary lookup.

Points: ``extract.chunk`` (after each chunk of embeddings, once it is committed).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

from ccl_cache.errors import ConfigError

ENV = "CCL_CACHE_PAUSE"
_passed: dict[str, int] = {}


def parse(spec: str) -> tuple[str, int, Path]:
    """``"extract.chunk:2:/tmp/paused"`` → ``("extract.chunk", 2, Path("/tmp/paused"))``."""
    try:
        point, count, marker = spec.split(":", 2)
        n = int(count)
    except ValueError:
        raise ConfigError(f"{ENV}={spec!r}: expected '<point>:<n>:<marker file>', e.g. "
                          "'extract.chunk:2:/tmp/paused'; unset it for a normal run") from None
    if n < 1 or not point or not marker:
        raise ConfigError(f"{ENV}={spec!r}: n must be at least 1 and the point and marker file named")
    return point, n, Path(marker)


def pause_point(name: str, before: Callable[[], None] | None = None) -> None:
    """Pause here (forever, until a signal) when ``CCL_CACHE_PAUSE`` names this point and pass;
    ``before()`` runs first (e.g. wait until the work done so far is committed)."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    point, n, marker = parse(spec)
    if point != name:
        return
    _passed[name] = _passed.get(name, 0) + 1
    if _passed[name] != n:
        return
    if before is not None:
        before()
    tmp = marker.with_name(marker.name + ".tmp")
    tmp.write_text(str(os.getpid()))
    tmp.replace(marker)  # whole or absent: the test reads the pid as soon as the file exists
    while True:  # a signal's handler (SIGINT: KeyboardInterrupt) or SIGKILL ends the wait
        time.sleep(0.05)
