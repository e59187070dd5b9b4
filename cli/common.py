"""Helpers shared by the command modules: consoles, JSON output, progress bars, and options whose
defaults are read from the library's config dataclasses."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
from typing import Any, Callable, Iterator, Mapping, Sequence

import click
from rich.console import Console

from ccl_cache.errors import CclCacheError
from ccl_cache.fileio import to_plain

PIPED_WIDTH = 400  # columns of tables written to a file or a pipe
# Piped or redirected, rich lays tables out for 80 columns and cuts cells ("prese…", "113/1…"):
# a file has no width, so tables get room for whole values.
console = Console(stderr=True) if sys.stderr.isatty() else Console(stderr=True, width=PIPED_WIDTH)
"""Human output (tables, progress) goes to stderr so stdout stays clean for --json."""


def echo_json(data: Any) -> None:
    click.echo(json.dumps(to_plain(data), indent=2))


def show_plan(make: Callable[[], Any], dry_run: bool, quiet: bool, as_json: bool) -> Any:
    """The plan of a long job (``make()``), printed before it starts unless ``quiet``; with
    ``dry_run`` the command ends there (exit 0, ``{"plan": ...}`` with ``as_json``). A plan that
    cannot be made (a missing manifest, not a store) is skipped: the job stops on the same problem
    and says so; under ``dry_run`` that problem is the answer."""
    try:
        plan = make()
    except CclCacheError:
        if dry_run:
            raise
        return None
    if not quiet:
        console.print(plan.render(), highlight=False, soft_wrap=True)
    if dry_run:
        if as_json:
            echo_json({"plan": plan.as_dict()})
        raise click.exceptions.Exit(0)
    return plan


def no_probe_option(what: str) -> Callable[[Any], Any]:
    """``--no-probe``: the plan without its timed probe of ``what`` (see :func:`probes`)."""
    return click.option("--no-probe", is_flag=True,
                        help=f"Plan without timing {what} (the plan's time is then not estimated).")


def probes(no_probe: bool, quiet: bool, dry_run: bool) -> bool:
    """Whether the plan times its probe: not with --no-probe, and not under --quiet (the plan is
    not printed then; --dry-run prints it all the same)."""
    return not no_probe and (dry_run or not quiet)


def interactive() -> bool:
    """True when a person is watching (progress bars); plain log lines otherwise."""
    return sys.stderr.isatty()


@contextlib.contextmanager
def resume_hint(hint: Callable[[], str]) -> Iterator[None]:
    """On Ctrl-C, say how to pick the work up again (``hint()``, read at that moment) before
    click's "Aborted." and exit status 130."""
    try:
        yield
    except KeyboardInterrupt:
        console.print(f"[yellow]interrupted: {hint()}", highlight=False, soft_wrap=True)
        raise


def resume_same_command(replaced: bool) -> str:
    """The hint of a resumable writer (extract, cache-clips): what is written stays. ``replaced``:
    an --overwrite run had already replaced the old data, so the same command would start over."""
    how = "the same command without --overwrite" if replaced else "the same command"
    return f"what was written so far is kept; rerun {how} to resume"


def field_default(config: type, name: str) -> Any:
    """The default of field ``name`` of the dataclass ``config`` (a ``default_factory`` called)."""
    for f in dataclasses.fields(config):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
            raise TypeError(f"{config.__name__}.{name} has no default for an option to read")
    raise TypeError(f"{config.__name__} has no field {name!r}")


class ConfigOption(click.Option):
    """An option whose value becomes field ``field`` of the dataclass ``config``.

    Its default is the field's, so it is written once (in the dataclass), in the form the option
    takes: a tuple joined by ``sep`` ("audio,image", "128x171"; a ``multiple`` option keeps the
    tuple) and None as ``none`` where the option has a word for it ("none"). ``parse`` turns the
    value the command receives into the field's (e.g. "audio,image" → ("audio", "image"));
    :func:`config_fields` applies it. ``given_only``: the default is None ("not given") and the
    command passes the value on only when given, so the library's default applies. ``{default}``
    in ``help`` stands for the field's default in the option's form.
    """

    def __init__(self, param_decls: Sequence[str], *, config: type, field: str,
                 parse: Callable[[Any], Any] | None = None, sep: str = ",", none: str | None = None,
                 given_only: bool = False, **attrs: Any) -> None:
        if "default" in attrs:
            raise TypeError(f"option {param_decls}: its default is {config.__name__}.{field}'s, not given here")
        self.config, self.field, self.parse, self.given_only = config, field, parse, given_only
        value = field_default(config, field)
        if isinstance(value, tuple) and not attrs.get("multiple"):
            value = sep.join(str(v) for v in value)
        self.shown = none if value is None else value
        if attrs.get("help"):
            attrs["help"] = attrs["help"].replace("{default}", str(self.shown))
        super().__init__(param_decls or ["--" + field.replace("_", "-")],
                         default=None if given_only else self.shown, **attrs)

    def to_field(self, value: Any) -> Any:
        """The field's value for the value the command received for this option."""
        return value if self.parse is None else self.parse(value)


class ManifestFormat(click.ParamType):
    """``--format``: a manifest format, optionally followed by its options
    (``webdataset:label_key=caption,split=test``), checked by :func:`ccl_cache.manifest.parse_format`."""

    name = "format"
    help = ("Manifest format; a format's options may follow after a colon, e.g. "
            "webdataset:label_key=caption,split=test (see docs/your-data.md).")

    def __init__(self) -> None:
        from ccl_cache.manifest import READERS

        self.choices = ("auto", *READERS.names())

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return f"[{'|'.join(self.choices)}][:OPTION=VALUE,...]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from ccl_cache.errors import CclCacheError
        from ccl_cache.manifest import parse_format

        try:
            parse_format(str(value))
        except CclCacheError as exc:
            self.fail(str(exc), param, ctx)
        return value


def config_option(config: type, field: str, *param_decls: str, **attrs: Any) -> Callable[[Any], Any]:
    """``click.option`` for field ``field`` of ``config`` (see :class:`ConfigOption`); the option's
    name is ``--field-name`` unless ``param_decls`` name it."""
    return click.option(*param_decls, cls=ConfigOption, config=config, field=field, **attrs)


def config_fields(values: Mapping[str, Any], config: type) -> dict[str, Any]:
    """``values`` (a command's keyword arguments) of the options of ``config``, by field name, each
    through its option's ``parse``; a ``given_only`` option left out when not given. Options of
    another dataclass are skipped; a name that is no config option is a TypeError (a value that
    would otherwise be dropped)."""
    options = {p.name: p for p in click.get_current_context().command.params if isinstance(p, ConfigOption)}
    fields: dict[str, Any] = {}
    for name, value in values.items():
        option = options.get(name)
        if option is None:
            raise TypeError(f"{name!r} is not a config option of this command; name it in the signature")
        if option.config is config and not (option.given_only and value is None):
            fields[option.field] = option.to_field(value)
    return fields
