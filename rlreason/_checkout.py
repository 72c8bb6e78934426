"""Imports `rlreason.environments` and `rlreason.rewards` from a source checkout on PYTHONPATH (how the
tests, helpers and verl workers run). The shipped environments and rewards live in the checkout's top-level
folders environments/ and rewards/, which an install maps to those names (pyproject.toml `package-dir`);
a bare checkout has no such mapping, so this finder provides it. It is added only when rlreason itself was
imported from a checkout, and ahead of an editable install's finder, so the checkout that supplied
rlreason also supplies its environments and rewards (not those of another checkout installed editable)."""

from __future__ import annotations

import sys
from importlib.machinery import ModuleSpec, PathFinder
from pathlib import Path

MAPPED = ("environments", "rewards")


class CheckoutFinder:
    """Meta path finder for exactly `rlreason.environments` and `rlreason.rewards`; their submodules
    resolve through the package's `__path__` as usual."""

    def __init__(self, root: Path) -> None:
        self.root = str(root)

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> ModuleSpec | None:
        parent, _, name = fullname.rpartition(".")
        if parent != "rlreason" or name not in MAPPED:
            return None
        return PathFinder.find_spec(fullname, [self.root])


def install(package_dir: Path) -> None:
    """Add the finder if `package_dir` (rlreason/) sits in a checkout: beside pyproject.toml and the
    mapped folders, and without them inside it (a wheel install holds rlreason/environments itself)."""
    root = package_dir.parent
    if any((package_dir / name).exists() for name in MAPPED) or not (root / "pyproject.toml").is_file():
        return
    if not all((root / name / "__init__.py").is_file() for name in MAPPED):
        return
    if not any(isinstance(f, CheckoutFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, CheckoutFinder(root))
