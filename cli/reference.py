"""Render the CLI reference (docs/cli.md) from the click commands themselves.

The reference is generated, and a test fails when it is stale, so it cannot drift from the code.
Regenerate with ``python -m ccl_cache_cli.reference > docs/cli.md``.
"""

from __future__ import annotations

import click

from ccl_cache_cli.main import COMMANDS, cli

HEADER = (
    "# CLI reference\n\n"
    "Generated from the commands by `python -m ccl_cache_cli.reference > docs/cli.md`; "
    "`tests/test_cli_main.py` fails when this file is stale.\n"
)


def _walk(command: click.Command, parent: click.Context, path: list[str]) -> list[str]:
    # Contexts chained to the root's, as when a user runs the command: they inherit the root's
    # help option names (-h/--help) and a fixed width, so the text does not depend on the terminal.
    ctx = click.Context(command, parent=parent, info_name=path[-1])
    parts = [f"\n## `{' '.join(path)}`\n\n```text\n{command.get_help(ctx)}\n```\n"]
    if isinstance(command, click.Group):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if sub is not None:
                parts.extend(_walk(sub, ctx, [*path, name]))
    return parts


def render() -> str:
    """The whole reference as Markdown: every command and subcommand with its --help text."""
    root = click.Context(cli, info_name="ccl-cache", terminal_width=100, max_content_width=100,
                         **cli.context_settings)
    parts = [HEADER]
    for name in COMMANDS:
        command = cli.get_command(root, name)
        if command is not None:
            parts.extend(_walk(command, root, ["ccl-cache", name]))
    return "".join(parts)


if __name__ == "__main__":
    click.echo(render(), nl=False)
