"""A tiny name → factory registry, the single source of truth for CLI choices and tests.

Losses, teachers, students, store backends and index types each own one ``Registry``; the CLI
builds its ``click.Choice`` from ``names()`` and the parametrised tests iterate over it, so adding
an entry is one decorated definition in one file.
"""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from ccl_cache.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to entries (classes or factories) of one kind."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@REGISTRY.register("name")`` above a class or factory."""

        def add(entry: T) -> T:
            if name in self._entries:
                raise ConfigError(f"{self.kind} {name!r} is registered twice; pick another name")
            self._entries[name] = entry
            return entry

        return add

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            choices = ", ".join(sorted(self._entries)) or "(none registered)"
            raise ConfigError(f"unknown {self.kind} {name!r}; choose one of: {choices}") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
