"""A name -> function table for the math in `rlreason.algos`, so a config string such as
`algo.adv_estimator: grpo` picks a function and a user's package can add one with a decorator.
Unlike `rlreason.registry.Registry` it has no entry points or lazy imports: the functions live in the
module that defines the registry, so importing it is enough."""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

from rlreason.registry import ConfigError, suggest

F = TypeVar("F", bound=Callable)


class FnRegistry(Generic[F]):
    """Functions by name. Registering a name twice raises (two definitions of one method would make a
    config ambiguous); an unknown name raises a ConfigError naming the config key and the valid names."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._fns: dict[str, F] = {}

    def register(self, name: str) -> Callable[[F], F]:
        def deco(fn: F) -> F:
            if name in self._fns:
                raise ValueError(f"{self.kind} '{name}' is already registered ({self._fns[name]!r})")
            self._fns[name] = fn
            return fn
        return deco

    def get(self, name: str, key: str = "") -> F:
        if name not in self._fns:
            allowed = self.names()
            where = f"{key}: " if key else ""
            raise ConfigError(f"{where}unknown {self.kind} '{name}'. Allowed: {', '.join(allowed)}."
                              + suggest(name, allowed))
        return self._fns[name]

    def names(self) -> list[str]:
        return sorted(self._fns)

    def __contains__(self, name: str) -> bool:
        return name in self._fns
