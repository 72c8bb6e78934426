"""Name -> object registries, so configs can say `env.name: markovian` and a user's own package can add
entries through a decorator (in a module the config lists under `imports:`) or an entry point
without editing rlreason. Registering a name twice raises; an unknown name raises with the valid names.
Entry points load lazily, one name at a time, so one broken third-party plugin cannot break lookups of
anything else. Every name-keyed choice in a config is one `Registry`; their entry point groups:

    rlreason.environments      env.name                 rlreason.registry.ENVIRONMENTS
    rlreason.rewards           rewards[i].name          rlreason.registry.REWARDS
    rlreason.advantages        algo.advantage           rlreason.algos.advantages.ADVANTAGES
    rlreason.policy_losses     algo.policy_loss         rlreason.algos.losses.POLICY_LOSSES
    rlreason.loss_agg_modes    algo.loss_agg_mode       rlreason.algos.losses.LOSS_AGG_MODES
    rlreason.kl_estimators     algo.kl_estimator        rlreason.algos.kl.KL_ESTIMATORS
    rlreason.data_sources      data.train/test.source   rlreason.data.builders.SOURCES
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import logging
import os
import sys
from contextlib import contextmanager
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Callable, Generic, Iterator, Mapping, TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)


class UserError(ValueError):
    """Bad input from the user (config, data file, command line): the CLI prints the message as one line
    and exits with code 2, without a traceback. Messages name their source (config key, file and line)."""


class ConfigError(UserError):
    """A configuration problem; the message names the key and what is allowed."""


def suggest(name: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(name, allowed, n=1)
    return f" Did you mean '{close[0]}'?" if close else ""


class Registry(Generic[T]):
    """Objects by name, for one kind of plug-in (environments, rewards, policy losses, data sources, ...).

    - `@REG.register("name")` adds an entry; registering a name twice with a different object raises,
      since two definitions would make a config ambiguous.
    - `REG.get(name, key)` returns it, or raises a ConfigError naming the config `key`, the allowed names
      and the closest one ("Did you mean ...").
    - `entry_point_group` lets an installed package add entries without being imported by anyone: its
      entry points are listed by `names()` but each is loaded only when its name is asked for, so one
      broken third-party plugin breaks lookups of its own name only.
    - `builtin_modules` are imported on first use, so a registry can be declared in a light module and
      filled by heavier ones.
    - `key` is the config key named in errors when a lookup does not give its own.
    - `temporary(...)` registers entries for the length of a `with` block (tests)."""

    def __init__(self, kind: str, entry_point_group: str | None = None,
                 builtin_modules: tuple[str, ...] = (), *, key: str = "") -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group
        self.builtin_modules = builtin_modules
        self.key = key
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

    @contextmanager
    def temporary(self, entries: Mapping[str, T] | str | None = None, obj: Any = None) -> Iterator[None]:
        """`with REG.temporary("name", obj):` or `with REG.temporary({"a": f, "b": g}):` registers for the
        block only; afterwards the registry holds exactly what it held before, so a test's throwaway
        plug-ins (and entry points loaded or modules' decorators run inside the block) never leak into the
        names other tests see. `REG.temporary()` only isolates. A name already registered raises, as
        `register` does. The built-in modules are imported first, so they are never rolled back."""
        items = {} if entries is None else {entries: obj} if isinstance(entries, str) else dict(entries)
        self._load()
        before = dict(self._items)
        try:
            for name, value in items.items():
                if name in self._items:
                    raise ValueError(f"{self.kind} '{name}' is already registered ({self._items[name]!r})")
                self.register(name)(value)
            yield
        finally:
            self._items.clear()
            self._items.update(before)

    def _load(self) -> None:
        """Import the built-in modules (their decorators register). Entry points are only listed here;
        `_entry_point` loads one when its name is asked for."""
        if self._loaded:
            return
        self._loaded = True
        for mod in self.builtin_modules:
            importlib.import_module(mod)

    def _entry_points(self) -> dict[str, EntryPoint]:
        if not self.entry_point_group:
            return {}
        return {ep.name: ep for ep in entry_points(group=self.entry_point_group)}

    def _entry_point(self, name: str, key: str) -> bool:
        """Load the entry point registered as `name`, if any. A plugin that fails to import is named in a
        warning and in the error, and only a lookup of that name fails."""
        ep = self._entry_points().get(name)
        if ep is None:
            return False
        try:
            obj = ep.load()
        except Exception as e:  # noqa: BLE001 - any failure inside third-party code
            dist = f" (package {ep.dist.name} {ep.dist.version})" if getattr(ep, "dist", None) else ""
            where = f"{key}: " if key else ""
            msg = (f"{self.kind} plugin '{name}' = '{ep.value}'{dist} from entry point group "
                   f"'{self.entry_point_group}' failed to load: {type(e).__name__}: {e}")
            log.warning("%s", msg)
            raise ConfigError(f"{where}{msg}") from e
        self._items.setdefault(name, obj)
        return True

    def names(self) -> list[str]:
        """Every name a lookup accepts: registered ones and (not yet loaded) entry points, sorted."""
        self._load()
        return sorted({*self._items, *self._entry_points()})

    def get(self, name: str, key: str = "") -> T:
        self.check(name, key)
        return self._items[name]

    def check(self, name: str, key: str = "", *, also: tuple[str, ...] = ()) -> None:
        """Raise the ConfigError `get` would raise, loading the name's entry point if it has one, so a config
        is checked (and a broken plugin reported) before anything slow starts. Names in `also` are accepted
        and listed as allowed: choices the caller handles itself (e.g. `gae`, which needs a critic)."""
        self._load()
        key = key or self.key
        where = f"{key}: " if key else ""
        if not isinstance(name, str):  # e.g. `source: [gsm8k]` in YAML; a list is not even hashable
            allowed = sorted({*self.names(), *also})
            raise ConfigError(f"{where}expected a {self.kind} name, got {name!r}. Allowed: {', '.join(allowed)}.")
        if name in also or name in self._items or self._entry_point(name, key):
            return
        allowed = sorted({*self.names(), *also})
        raise ConfigError(f"{where}unknown {self.kind} '{name}'. Allowed: {', '.join(allowed)}."
                          + suggest(name, allowed))

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self._items or name in self._entry_points()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.entry_point_group!r})"


def import_modules(modules: list[str], key: str = "imports") -> None:
    """Import the user's modules (`imports: [my_pkg.my_env]`, `--import my_pkg.my_env`) so the
    environments and rewards they register by decorator exist before any lookup. The working directory
    is importable whether the CLI runs as `rlreason` or as `python -m rlreason.cli` (its re-exec)."""
    if not isinstance(modules, list) or not all(isinstance(m, str) and m for m in modules):
        raise ConfigError(f"{key}: expected a list of module names (e.g. [my_pkg.my_env]), got {modules!r}")
    if modules and os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())
    for i, mod in enumerate(modules):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name and mod.startswith(e.name):
                raise ConfigError(f"{key}[{i}]: cannot import module '{mod}': no module named '{e.name}' "
                                  f"(on PYTHONPATH or in {os.getcwd()})") from e
            raise ConfigError(f"{key}[{i}]: importing '{mod}' failed: {type(e).__name__}: {e}") from e
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - an error inside the user's module, named as such
            raise ConfigError(f"{key}[{i}]: importing '{mod}' failed: {type(e).__name__}: {e}") from e


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
                                       ("rlreason.environments",))
REWARDS: Registry[Any] = Registry("reward", "rlreason.rewards", ("rlreason.rewards",))

register_environment = ENVIRONMENTS.register
register_reward = REWARDS.register


def build_environment(name: str, tokenizer: Any, args: dict[str, Any],
                      markovian: dict[str, Any] | None = None) -> Any:
    """env.name built with env.args, inside Delethink chunking when env.markovian is given. Every place that
    runs a config's environment (trainer, eval, verl agent loop) builds it here, so composition holds there."""
    cls = ENVIRONMENTS.get(name, "env.name")
    check_kwargs(cls.__init__, args, "env.args")
    env = cls(tokenizer, **args)
    if markovian is None:
        return env
    from rlreason.delethink import wrap_markovian  # imports rlreason.types; registry stays import-light
    return wrap_markovian(env, markovian)
