"""A tiny name -> factory registry (after fvcore's ``Registry``).

Things chosen by name in a config (models, datasets, channel-selection rules)
are looked up here, so an unknown name can list the known ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from adprune_core.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects; ``get`` raises ``ConfigError`` listing the known names."""

    def __init__(self, kind: str, config_key: str) -> None:
        self.kind = kind
        self.config_key = config_key
        self._items: dict[str, T] = {}
        self.extra_hint = ""

    def register(self, name: str) -> Callable[[T], T]:
        def add(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        if name not in self._items:
            raise ConfigError(
                f"{self.config_key}: unknown {self.kind} {name!r}; known: {', '.join(self.names())}"
                f"{self.extra_hint}"
            )
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
