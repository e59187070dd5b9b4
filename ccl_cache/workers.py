"""Worker processes for per-file work (decoding, encoding): one pool with per-task deadlines and
crash isolation.

:class:`WorkerPool` runs a top-level (picklable) function over tasks in worker processes and
hands back ``(task, answer)`` pairs in completion order. A worker that dies on a task, or
overruns ``timeout_s`` on it (then it is killed), answers that task with a :class:`TaskFailure`
and is replaced; the other tasks go on. An exception the function raises is raised again in the
caller, as ``concurrent.futures`` does. ``workers=0`` runs the tasks in the calling thread.

Workers are forked by multiprocessing's fork server (``forkserver``): never forked from the
caller, which may run threads and CUDA. A worker imports only this module, the function's module
and those of the task and argument types, so a function that lives in a light module (PyAV,
numpy) keeps torch out of the workers. Two things keep a worker's start at a fork's cost:

* the caller's ``__main__`` is not run again in each worker. multiprocessing runs it in every
  child unless the fork server preloaded it, and the fork server never does (CPython
  gh-98552, gh-137996: its ``__main__`` preload reads a key that ``spawn`` stopped writing), so
  each worker of ``ccl-cache`` re-imported the CLI, and each worker of a script that imports
  torch imported torch (seconds per worker, per pool; docs/performance.md). Workers run
  ``__main__`` only when the function or initializer is defined there;
* the fork server preloads this module and the function's (:func:`preload_modules`), so a worker
  is forked with them imported instead of importing them itself (when this pool starts the fork
  server; one started before keeps its own preloads, and workers import what it lacks).

Users: extraction's decode workers (``extract.decode.DecodePool``), the frame cache builder
(``extract.frame_cache``) and the synthetic dataset writer (``experiments.synth``).
"""

from __future__ import annotations

import collections
import contextlib
import copy
import math
import multiprocessing
import multiprocessing.connection
import pickle
import queue
import signal
import sys
import threading
import time
import traceback
import types
from dataclasses import dataclass
from typing import Any, Callable, Generic, Iterable, Iterator, TypeVar

from ccl_cache import hardware
from ccl_cache.errors import CclCacheError, ConfigError

T = TypeVar("T")
R = TypeVar("R")

# The one bound on worker processes (every --workers: extract, cache-clips, synth, distill, embed):
# each is a process with its own decoder, buffers and memory; past a few per core they only queue
# for the CPU, and a typo (--workers 2000) would fork until the machine runs out of memory.
WORKERS_PER_CORE = 4
MAX_WORKERS = 256


def max_workers() -> int:
    """The most worker processes a command may start here: ``WORKERS_PER_CORE`` per usable core,
    never more than ``MAX_WORKERS``."""
    return min(MAX_WORKERS, WORKERS_PER_CORE * hardware.usable_cores())


def check_workers(workers: int, what: str = "workers") -> int:
    """``workers`` when it is 0 (work in this process) to :func:`max_workers`; a ConfigError that
    names the bound and the fix otherwise."""
    if workers < 0:
        raise ConfigError(f"{what}={workers}: need 0 (work in this process) or more")
    limit = max_workers()
    if workers > limit:
        cores = hardware.usable_cores()
        raise ConfigError(f"{what}={workers}: at most {limit} worker processes here ({WORKERS_PER_CORE} per usable "
                          f"core, {cores} usable, never more than {MAX_WORKERS}): more only queue for the cores "
                          f"and hold memory; pass --workers {cores} (one per core) or fewer")
    return workers

WORKER_START_S = 120.0  # a worker that is not ready by then is broken (imports, resources)
_READY = "ready"


@dataclass(frozen=True)
class TaskFailure:
    """Why a task has no answer: its worker process died (``"crash"``) or overran ``timeout_s``
    on it and was killed (``"timeout"``)."""

    reason: str
    timeout_s: float | None = None


@dataclass(frozen=True)
class _Raised:
    """An exception the task function raised in a worker; ``error`` is None when it does not
    survive pickling (then only its traceback comes back)."""

    error: BaseException | None
    traceback: str


class _RemoteTraceback(Exception):
    """The worker's traceback, chained to the exception raised again in the caller."""

    def __str__(self) -> str:
        return f"\n\"\"\"\n{self.args[0]}\"\"\""


def _answer(fn: Callable[..., Any], task: Any, args: tuple[Any, ...]) -> Any:
    try:
        return fn(task, *args)
    except Exception as exc:  # noqa: BLE001 - raised again in the caller
        text = traceback.format_exc()
        try:
            # copy rebuilds it from its args as unpickling would: some exceptions cannot be.
            pickle.dumps(copy.copy(exc))
        except Exception:  # noqa: BLE001
            return _Raised(None, text)
        return _Raised(exc, text)


def _worker_main(conn: multiprocessing.connection.Connection, fn: Callable[..., Any], args: tuple[Any, ...],
                 initializer: Callable[..., None] | None, initargs: tuple[Any, ...]) -> None:
    """A worker: say it is ready, then answer one task at a time until told to stop (None)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the caller handles Ctrl-C and stops us
    if initializer is not None:
        initializer(*initargs)
    conn.send(_READY)
    while True:
        try:
            task = conn.recv()
        except EOFError:
            return
        if task is None:
            return
        conn.send(_answer(fn, task, args))


def runs_main(fn: Callable[..., Any], initializer: Callable[..., None] | None = None) -> bool:
    """True when a worker must run the caller's ``__main__``: the function or initializer is
    defined there (a script's own task function)."""
    return any(getattr(f, "__module__", None) == "__main__" for f in (fn, initializer) if f is not None)


def preload_modules(fn: Callable[..., Any], initializer: Callable[..., None] | None = None) -> list[str]:
    """The modules the fork server imports once for the workers: this one and those of the
    function and initializer (not ``__main__``, which workers do not run unless they must)."""
    names = {__name__} | {getattr(f, "__module__", None) or "" for f in (fn, initializer) if f is not None}
    return sorted(n for n in names if n and n != "__main__")


# Serialises worker starts (all pools): the __main__ stand-in below must not be seen by another
# pool's start.
_START_LOCK = threading.Lock()


@contextlib.contextmanager
def _main_unnamed() -> Iterator[None]:
    """While a worker starts: ``__main__`` is a module with neither ``__file__`` nor ``__spec__``
    (as in an interactive session), so multiprocessing's start-up data names no main module for
    the child to run. The real one is back as soon as the start-up data is written. (Another
    thread pickling an object of ``__main__`` in that instant would not find it: worker starts are
    serialised by ``_START_LOCK``, and no other thread of the library pickles such objects.)"""
    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        if main is None:
            del sys.modules["__main__"]
        else:
            sys.modules["__main__"] = main


class _Worker:
    """One worker process, whether it has started, and the task it is working on."""

    def __init__(self, ctx: Any, pool: "WorkerPool[Any, Any]") -> None:
        self.conn, child = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=_worker_main, args=(child, pool.fn, pool.args, pool.initializer, pool.initargs),
                                daemon=True, name=f"ccl-{pool.name}")
        with _START_LOCK, (contextlib.nullcontext() if runs_main(pool.fn, pool.initializer) else _main_unnamed()):
            # Takes effect when this start launches the fork server (the process's first worker).
            ctx.set_forkserver_preload(preload_modules(pool.fn, pool.initializer))
            self.proc.start()
        pool.started += 1
        child.close()
        self.ready = False
        self.busy = False
        self.task: Any = None
        # The per-task clock starts at assignment, and only ready workers get tasks: a slow start
        # (imports) never counts against a task.
        self.deadline = time.monotonic() + WORKER_START_S

    @property
    def waiting(self) -> bool:
        """True while we wait for this worker: starting up or working."""
        return not self.ready or self.busy

    def assign(self, task: Any, timeout_s: float | None) -> None:
        self.task, self.busy = task, True
        self.deadline = time.monotonic() + (math.inf if timeout_s is None else timeout_s)
        self.conn.send(task)

    def stop(self, kill: bool = False) -> None:
        if not kill:
            with contextlib.suppress(OSError, BrokenPipeError):
                self.conn.send(None)
            self.proc.join(timeout=2.0)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(timeout=5.0)
        self.conn.close()


class WorkerPool(Generic[T, R]):
    """Run ``fn(task, *args)`` over tasks in ``workers`` processes; answers come back in any order.

    ``fn``, ``args``, ``initializer`` and the tasks must pickle (``fn`` a module-level function);
    ``initializer(*initargs)`` runs once in each worker. :meth:`start` takes the tasks (any
    iterable, read lazily in the caller's thread, None is not a task); :meth:`get` returns the
    next ``(task, answer)``, where ``answer`` is ``fn``'s result or a :class:`TaskFailure`;
    iterating the pool gets every remaining answer. A dispatcher thread feeds idle workers,
    collects answers and replaces a worker that dies or overruns ``timeout_s`` (None: no
    deadline) on a task. At most ``readahead`` answers wait unconsumed, bounding memory.

    ``name`` (what the workers do, e.g. "decode"), ``job`` (what a script runs) and ``inline``
    (how to do without workers) word the errors; ``error`` is their type.
    """

    def __init__(self, fn: Callable[..., R], workers: int, *, args: tuple[Any, ...] = (),
                 timeout_s: float | None = None, readahead: int = 128,
                 initializer: Callable[..., None] | None = None, initargs: tuple[Any, ...] = (),
                 name: str = "worker", job: str = "it",
                 inline: str = "workers=0 runs the tasks in this process instead",
                 error: type[CclCacheError] = CclCacheError) -> None:  # fmt: skip
        self.fn, self.workers, self.args, self.timeout_s = fn, check_workers(workers), args, timeout_s
        self.initializer, self.initargs = initializer, initargs
        self.name, self.job, self.inline, self.error = name, job, inline, error
        self.replaced = 0  # workers killed (timeout) or lost (crash)
        self.started = 0  # worker processes started (replacements included)
        self._source: Iterator[T] = iter(())
        self._exhausted = True  # the source has given its last task
        self._taken = self._given = 0  # tasks read from the source / answers returned by get()
        self._ahead = max(1, readahead) + max(0, workers)  # tasks read ahead of the dispatcher
        self._tasks: collections.deque[T] = collections.deque()
        self._out: queue.Queue[tuple[T, Any]] = queue.Queue()
        self._slots = threading.Semaphore(max(1, readahead))
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "WorkerPool[T, R]":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[tuple[T, R | TaskFailure]]:
        while True:
            self._top_up()
            if self._exhausted and self._given == self._taken:
                return
            yield self.get()

    def start(self, tasks: Iterable[T]) -> None:
        self._source, self._exhausted = iter(tasks), False
        self._top_up()
        if self.workers > 0 and self._tasks:
            self._thread = threading.Thread(target=self._dispatch, name=f"ccl-{self.name}-dispatch", daemon=True)
            self._thread.start()

    def get(self) -> tuple[T, R | TaskFailure]:
        """The next finished task and its answer (blocks)."""
        self._top_up()
        if self.workers == 0:
            task = self._tasks.popleft()
            self._given += 1
            return task, self.fn(task, *self.args)
        while True:
            try:
                task, answer = self._out.get(timeout=0.5)
            except queue.Empty:
                self._raise_stopped()
                continue
            self._slots.release()
            self._given += 1
            if isinstance(answer, _Raised):
                if answer.error is None:
                    raise self.error(f"a {self.name} task raised in its worker process:\n{answer.traceback}")
                raise answer.error from _RemoteTraceback(answer.traceback)
            return task, answer

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30.0)

    def _top_up(self) -> None:
        """Read tasks from the source until ``_ahead`` wait (in the caller's thread: a source may
        read the store, which the dispatcher thread must not touch)."""
        while not self._exhausted and len(self._tasks) < self._ahead:
            try:
                task = next(self._source)
            except StopIteration:
                self._exhausted = True
                return
            self._tasks.append(task)
            self._taken += 1

    def _raise_stopped(self) -> None:
        if self._error is not None:
            if isinstance(self._error, CclCacheError):
                raise self._error
            raise self.error(f"the {self.name} pool stopped: {self._error!r}") from self._error
        if self._thread is None or (not self._thread.is_alive() and self._out.empty()):
            raise self.error(f"the {self.name} pool has no task left to answer; get() was called once too often")

    def _dispatch(self) -> None:
        ctx = multiprocessing.get_context("forkserver")
        workers = [_Worker(ctx, self) for _ in range(self.workers)]
        try:
            while not self._stop.is_set():
                self._feed(workers)
                # _exhausted first: once it is True, every task is in _tasks (appended before it was set).
                if self._exhausted and not self._tasks and not any(w.busy for w in workers):
                    return
                waiting = [w for w in workers if w.waiting]
                if not waiting:
                    time.sleep(0.01)  # readahead full: wait for the consumer
                    continue
                multiprocessing.connection.wait([w.conn for w in waiting] + [w.proc.sentinel for w in waiting], 0.1)
                for i, worker in enumerate(workers):
                    if worker.waiting:
                        workers[i] = self._service(ctx, worker)
        except BaseException as exc:  # noqa: BLE001 - reported to the consumer by get()
            self._error = exc
        finally:
            for worker in workers:
                worker.stop(kill=self._stop.is_set() or self._error is not None)

    def _feed(self, workers: list[_Worker]) -> None:
        for worker in workers:
            if worker.ready and not worker.busy and self._tasks:
                if not self._slots.acquire(blocking=False):
                    return
                worker.assign(self._tasks.popleft(), self.timeout_s)

    def _started(self, worker: _Worker) -> None:
        """Consume the start-up message (the connection is readable and the worker not ready)."""
        try:
            message = worker.conn.recv()
        except (EOFError, OSError):
            message = None
        if message != _READY:
            # A worker runs the caller's script only for a function defined there: then a script
            # without the guard would run its job again in each worker.
            guard = (f"a script that runs {self.job} with a function of its own must guard its entry point with "
                     '`if __name__ == "__main__":`; ') if runs_main(self.fn, self.initializer) else ""
            raise self.error(f"a {self.name} worker process exited while starting (exit code {worker.proc.exitcode}; "
                             f"its error is printed above), so {self.job} stopped. {guard}{self.inline}")
        worker.ready = True

    def _service(self, ctx: Any, worker: _Worker) -> _Worker:
        """Collect the worker's message, or replace it when it died or overran its deadline."""
        if not worker.ready:
            if worker.conn.poll():
                self._started(worker)
            elif not worker.proc.is_alive() or time.monotonic() > worker.deadline:
                raise self.error(f"a {self.name} worker did not start within {WORKER_START_S:g} s "
                                 f"(exit code {worker.proc.exitcode}); the machine may be overloaded")
            return worker
        task = worker.task
        if worker.conn.poll():
            try:
                self._out.put((task, worker.conn.recv()))
                worker.task, worker.busy = None, False
                return worker
            except (EOFError, OSError):
                failure = TaskFailure("crash", self.timeout_s)
        elif not worker.proc.is_alive():
            failure = TaskFailure("crash", self.timeout_s)
        elif time.monotonic() > worker.deadline:
            failure = TaskFailure("timeout", self.timeout_s)
        else:
            return worker
        worker.stop(kill=True)
        self.replaced += 1
        self._out.put((task, failure))
        return _Worker(ctx, self)
