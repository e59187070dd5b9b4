"""`ccl-cache benchmark`: a group of offline benchmarks, one module per subcommand.

``retrieval`` lives in :mod:`ccl_cache_cli.benchmark_retrieval`, ``table`` (the method table) in
:mod:`ccl_cache_cli.benchmark_table`. Subcommands are imported when asked for, so a subcommand
whose module is absent (or fails to import) does not take the others down with it.
"""

from __future__ import annotations

import importlib
import importlib.util

import click

# subcommand -> (module under ccl_cache_cli, attribute, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "retrieval": ("benchmark_retrieval", "retrieval",
                  "Recall@K / mAP of student runs and teachers (queries vs gallery), reports and plot."),
    "table": ("benchmark_table", "table", "The method table: train each method and compare (Table 1)."),
}


def _available(name: str) -> bool:
    module = SUBCOMMANDS[name][0]
    return importlib.util.find_spec(f"ccl_cache_cli.{module}") is not None


class BenchmarkGroup(click.Group):
    """Lists the subcommands whose modules exist; imports one only when it runs."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name in SUBCOMMANDS if _available(name)]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in SUBCOMMANDS or not _available(name):
            return None
        module, attr, _ = SUBCOMMANDS[name]
        return getattr(importlib.import_module(f"ccl_cache_cli.{module}"), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, SUBCOMMANDS[name][2]) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=BenchmarkGroup)
def benchmark() -> None:
    """Offline benchmarks: retrieval (Recall@K curves) and the method table."""
