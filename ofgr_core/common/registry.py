"""A small name -> factory registry shared by models, losses, samplers and dataset adapters."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from ofgr_core.common.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to factories. ``create(name, **kwargs)`` builds one; unknown names suggest the closest."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def deco(fn: Callable[..., T]) -> Callable[..., T]:
            if name in self._factories:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._factories[name] = fn
            return fn

        return deco

    def get(self, name: str) -> Callable[..., T]:
        try:
            return self._factories[name]
        except KeyError:
            close = difflib.get_close_matches(name, list(self._factories), n=1)
            hint = f", did you mean {close[0]!r}?" if close else f" (known: {', '.join(sorted(self))})"
            raise ConfigError(f"unknown {self.kind} {name!r}{hint}") from None

    def create(self, name: str, /, **kwargs: object) -> T:
        return self.get(name)(**kwargs)

    def __contains__(self, name: object) -> bool:
        return name in self._factories

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._factories))
