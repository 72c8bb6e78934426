"""rlreason ships its environments and rewards as `rlreason.environments` and `rlreason.rewards`: the
folders environments/ and rewards/ sit at the top of the checkout, but an install must never put packages
named `environments` or `rewards` into site-packages, where they would collide with any other project's.
Checked the three ways rlreason runs: a regular (wheel) install, an editable install (scripts/setup.sh) and
a checkout on PYTHONPATH, the last also over an editable install of another checkout (a second worktree).

Each install goes into a fresh venv made from a copy of the checkout's files, built offline
(`--no-index --no-build-isolation`): the venv sees the running interpreter's site-packages through a .pth
line (setuptools and rlreason's dependencies), whose own .pth files (its editable rlreason) stay inactive."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Run inside the fresh venv: what a user sees after installing rlreason plus a plug-in package.
PROBE = r'''
import importlib.util, json, sys, threading
out = {"top_level": {m: importlib.util.find_spec(m) is not None for m in ("environments", "rewards")}}
import rlreason.environments, rlreason.rewards
from rlreason.registry import ENVIRONMENTS, REWARDS
out["environments_file"] = rlreason.environments.__file__
out["rewards_file"] = rlreason.rewards.__file__
out["builtin"] = [ENVIRONMENTS.get("single_turn").__module__, REWARDS.get("qa_em").__module__]
plugin = ENVIRONMENTS.get("my_plugin_env")
out["plugin"] = [plugin.__module__, plugin.__mro__[1].__module__, REWARDS.get("my_plugin_reward")("4", "4")]
# math-verify off the main thread runs in a `python -c` worker process, which imports the reward by name.
res = []
t = threading.Thread(target=lambda: res.append(REWARDS.get("math")("so \\boxed{4}", "4").value))
t.start(); t.join()
out["math_in_worker"] = res[0]
print("PROBE" + json.dumps(out))
'''

PLUGIN = '''
from rlreason.environments.single_turn import SingleTurn


class MyPluginEnv(SingleTurn):
    """A user's environment built on a shipped one, found through the rlreason.environments entry point."""


def my_plugin_reward(completion: str, answer: str) -> float:
    return float(answer in completion)
'''


def _copy_checkout(dst: Path) -> Path:
    """The checkout's tracked and not-ignored files (what a clone or an sdist holds), without build output;
    outside git, the files the build reads."""
    r = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                       capture_output=True)
    rels = r.stdout.decode().split("\0") if r.returncode == 0 else \
        ["pyproject.toml", "README.md", *(str(p.relative_to(REPO)) for top in ("rlreason", "environments", "rewards")
                                          for p in (REPO / top).rglob("*.py"))]
    for rel in filter(None, rels):
        src = REPO / rel
        if src.is_file() and "/tests/" not in f"/{rel}" and not rel.endswith((".png", ".jsonl", ".parquet")):
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    return dst


def _venv(where: Path) -> tuple[Path, Path]:
    """A venv without pip whose python sees the running interpreter's packages after its own."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    py = where / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True, env=_clean_env()).stdout.strip())
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "_rlreason_test_deps.pth").write_text("\n".join(sorted(deps)) + "\n")
    return py, site


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    return {**env, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", **extra}


def _pip_install(py: Path, *args: str, cwd: Path) -> None:
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", *args],
                       capture_output=True, text=True, cwd=cwd, env=_clean_env(), timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]


def _install_plugin(site: Path) -> None:
    """A user's plug-in distribution registering through rlreason's entry point groups."""
    (site / "my_rlreason_plugin.py").write_text(PLUGIN)
    dist = site / "my_rlreason_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-rlreason-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[rlreason.environments]\nmy_plugin_env = my_rlreason_plugin:MyPluginEnv\n"
        "[rlreason.rewards]\nmy_plugin_reward = my_rlreason_plugin:my_plugin_reward\n")


def _probe(py: Path, cwd: Path, **env: str) -> dict:
    r = subprocess.run([str(py), "-c", PROBE], capture_output=True, text=True, cwd=cwd,
                       env=_clean_env(**env), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("PROBE"))
    return json.loads(line[len("PROBE"):])


def _check(out: dict, package_dirs: Path, *, installed: bool = True) -> None:
    """`package_dirs`: where rlreason.environments and rlreason.rewards must come from. A checkout on
    PYTHONPATH also exposes its top-level folders (that is the layout); an install must not."""
    if installed:
        assert out["top_level"] == {"environments": False, "rewards": False}
    assert Path(out["environments_file"]) == package_dirs / "environments" / "__init__.py"
    assert Path(out["rewards_file"]) == package_dirs / "rewards" / "__init__.py"
    assert out["builtin"] == ["rlreason.environments.single_turn", "rlreason.rewards.qa"]
    assert out["plugin"] == ["my_rlreason_plugin", "rlreason.environments.single_turn", 1.0]
    assert out["math_in_worker"] == 1.0


def _packages(root: Path) -> set[str]:
    return {".".join(p.parent.relative_to(root).parts) for p in root.rglob("__init__.py")
            if "__pycache__" not in p.parts}


@pytest.mark.slow
def test_wheel_install_has_only_the_rlreason_namespace(tmp_path):
    src = _copy_checkout(tmp_path / "src")
    py, site = _venv(tmp_path / "venv")
    _pip_install(py, str(src), cwd=tmp_path)
    _install_plugin(site)
    assert not (site / "environments").exists() and not (site / "rewards").exists()
    # Every package of the checkout is in the wheel (pyproject lists them), under rlreason only.
    want = (_packages(src) - {"environments", "rewards"} - {p for p in _packages(src) if not p.startswith("rlreason")}
            | {"rlreason.environments", "rlreason.rewards"})
    assert _packages(site) - {p for p in _packages(site) if not p.startswith("rlreason")} == want
    _check(_probe(py, cwd=tmp_path), site / "rlreason")


@pytest.mark.slow
def test_editable_install_and_checkout_on_pythonpath(tmp_path):
    src = _copy_checkout(tmp_path / "src")
    py, site = _venv(tmp_path / "venv")
    _pip_install(py, "-e", str(src), cwd=tmp_path)  # scripts/setup.sh's way
    _install_plugin(site)
    _check(_probe(py, cwd=tmp_path), src)
    # Another checkout on PYTHONPATH (how tests and a second worktree run) wins over the editable install.
    other = _copy_checkout(tmp_path / "other")
    _check(_probe(py, cwd=tmp_path, PYTHONPATH=str(other)), other, installed=False)
    # And with no install at all.
    bare, bare_site = _venv(tmp_path / "bare")
    _install_plugin(bare_site)
    _check(_probe(bare, cwd=tmp_path, PYTHONPATH=str(other)), other, installed=False)


def _top_level_imports(tree: ast.Module) -> list[tuple[int, str]]:
    """Modules imported by statements that run at import time (module body, incl. its if/try blocks)."""
    out, todo = [], list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out += [(node.lineno, f"{node.module}.{a.name}" if node.module == "rlreason" else node.module)
                    for a in node.names]
        elif isinstance(node, (ast.If, ast.Try)):
            todo += node.body + node.orelse + getattr(node, "finalbody", []) + \
                [n for h in getattr(node, "handlers", []) for n in h.body]
    return out


def test_core_imports_shipped_environments_and_rewards_only_on_use():
    """rlreason's own modules reach the shipped environments and rewards through the registry or an import
    inside the function that uses them, never at import time: importing rlreason stays light and free of
    cycles (environments import rlreason), and nothing imports them under their folder names."""
    bad = []
    for path in sorted((REPO / "rlreason").rglob("*.py")):
        for line, mod in _top_level_imports(ast.parse(path.read_text(), str(path))):
            if mod.split(".")[0] in ("environments", "rewards") or \
                    mod.startswith(("rlreason.environments", "rlreason.rewards")):
                bad.append(f"{path.relative_to(REPO)}:{line}: {mod}")
    assert not bad, "\n".join(dict.fromkeys(bad))


def test_no_import_by_folder_name():
    """Code, commands and docs import the shipped packages as rlreason.environments/rlreason.rewards (the
    names an install has), never by folder name (also not inside a `python -c` string)."""
    folder_import = re.compile(r"\b(from|import)\s+(environments|rewards)\b")
    files = [REPO / "README.md", *(REPO / "docs").rglob("*.md"),
             *(p for top in ("rlreason", "environments", "rewards", "tests", "benchmarks", "launch", "scripts")
               for p in (REPO / top).rglob("*") if p.suffix in (".py", ".sh", ".md"))]
    bad = [f"{path.relative_to(REPO)}:{n}: {line.strip()}" for path in sorted(files)
           for n, line in enumerate(path.read_text().splitlines(), 1) if folder_import.search(line)]
    assert not bad, "\n".join(bad)
