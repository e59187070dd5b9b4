"""Load a script of ``benchmarks/`` as a module, for tests that call its functions.

The scripts are not a package: they import their siblings by name (``table1_synthetic``,
``_common``), so the folder goes on ``sys.path`` once; each module is registered in
``sys.modules`` before it runs (dataclasses look their module up while the class is built) and
loaded once per test session.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(script: str) -> ModuleType:
    """The module of ``benchmarks/<script>.py`` (as ``bench_<script>``)."""
    name = f"bench_{script}"
    if name in sys.modules:
        return sys.modules[name]
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{script}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
