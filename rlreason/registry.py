"""Name -> object registries, so configs can say `env.name: markovian` and a user's own package can add
entries through a decorator or an entry point (`rlreason.environments`, `rlreason.rewards`) without
editing rlreason. Registering a name twice raises; an unknown name raises with the valid names."""

from __future__ import annotations

import difflib
import importlib
import inspect
from importlib.metadata import entry_points
from typing import Any, Callable, Generic, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration problem; the message names the key and what is allowed."""


def suggest(name: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(name, allowed, n=1)
    return f" Did you mean '{close[0]}'?" if close else ""


class Registry(Generic[T]):
    def __init__(self, kind: str, entry_point_group: str | None = None,
                 builtin_modules: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group
        self.builtin_modules = builtin_modules
        self._items: dict[str, T] = {}
        self._loaded = False

    def register(self, name: str | None = None) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            key = name or getattr(obj, "name", None) or getattr(obj, "__name__")
            if key in self._items and self._items[key] is not obj:
                raise ValueError(f"{self.kind} '{key}' is already registered ({self._items[key]!r})")
            self._items[key] = obj
            # A subclass inherits its parent's `name`; it must log and resolve under its own key.
            if inspect.isclass(obj) and not obj.__dict__.get("name"):
                obj.name = key  # type: ignore[attr-defined]
            return obj
        return deco

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for mod in self.builtin_modules:
            importlib.import_module(mod)
        if self.entry_point_group:
            for ep in entry_points(group=self.entry_point_group):
                if ep.name not in self._items:
                    obj = ep.load()
                    self._items.setdefault(ep.name, obj)

    def names(self) -> list[str]:
        self._load()
        return sorted(self._items)

    def get(self, name: str, key: str = "") -> T:
        self._load()
        if name not in self._items:
            allowed = self.names()
            where = f"{key}: " if key else ""
            raise ConfigError(f"{where}unknown {self.kind} '{name}'. Allowed: {', '.join(allowed)}."
                              + suggest(name, allowed))
        return self._items[name]

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self._items


def check_kwargs(fn: Callable[..., Any], kwargs: dict[str, Any], key: str,
                 skip: tuple[str, ...] = ("self", "tokenizer")) -> None:
    """Reject keyword arguments `fn` does not take, naming each and listing the allowed ones."""
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    allowed = [n for n, p in params.items() if n not in skip
               and p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    for k in kwargs:
        if k not in allowed:
            raise ConfigError(f"{key}.{k}: unknown argument. Allowed: {', '.join(allowed) or '(none)'}."
                              + suggest(k, allowed))


ENVIRONMENTS: Registry[Any] = Registry("environment", "rlreason.environments",
                                       ("environments",))
REWARDS: Registry[Any] = Registry("reward", "rlreason.rewards", ("rewards",))

register_environment = ENVIRONMENTS.register
register_reward = REWARDS.register


def build_environment(name: str, tokenizer: Any, args: dict[str, Any]) -> Any:
    cls = ENVIRONMENTS.get(name, "env.name")
    check_kwargs(cls.__init__, args, "env.args")
    return cls(tokenizer, **args)
