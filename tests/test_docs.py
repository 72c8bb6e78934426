"""The documentation is executable: every shell command in README.md and docs/*.md runs, every python snippet
runs, every relative link and every repository path the docs name exists, and nothing points outside the
repository.

How commands run (`test_doc_commands`, slow): the fenced ```bash blocks of one document, in order, as one bash
script (`set -e`, so state such as a run directory flows from one command to the next), in a scratch copy of
the checkout whose `.venv` is a link to the real one. Commands are shrunk so each training or generation
command takes seconds: SHRINK appends overrides/flags (one or two steps, two prompts, a few tokens, the
`tiny-random` model, which has SmolLM2's tokenizer); later values win over the document's own, so the command
a user reads is the command that runs. Commands that need a GPU, the network, another machine, or that are
this test suite itself are listed in SKIP with the reason; anything not listed must run.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

# Command pattern (matched against the start of the command) -> why it does not run here.
SKIP: dict[str, str] = {
    r"bash scripts/test\.sh": "the test suite itself (CI's command); it would run this test again",
    r"python3\.11 -m venv": "GPU-node install into a new venv (network)",
    r"pip install": "network install (GPU node)",
    r"launch/verl_single_node\.sh": "needs GPUs and verl[vllm] (verl's trainer has no CPU path)",
    r"node\d\$ ": "multi-node launch, typed on two machines",
    r"sbatch ": "needs a Slurm cluster with GPUs",
    r"bash scripts/setup_verl_venv\.sh": "builds .venv-verl; scripts/test.sh runs it before the tests",
    r"\.venv-verl/bin/python -m pytest tests/verl": "the verl suite; tests/test_verl_bridge.py runs it",
    r"\.venv/bin/python -m pytest tests/test_verl_bridge\.py": "part of this test suite",
    r'(?:\w+=(?:"[^"]*"|\S+) )*bash launch/refusal_cliff_qwen_cpu\.sh':
        "opt-in study: downloads the 491 MB Qwen model; tens of minutes on CPU",
    r"launch/autocei_small_cpu\.sh": "the Auto-CEI experiment with SmolLM2 (an hour on CPU); "
                                       "tests/test_autocei_launch.py runs the same script on tiny-random",
    r"(?:\w+=(?:\"[^\"]*\"|\S+) )*bash launch/mash_small_cpu\.sh":
        "the MASH comparison with SmolLM2 (tens of minutes on CPU); tests/test_mash_launch.py runs the same "
        "script on tiny-random",
}

_TRAIN = ("model.name=tiny-random trainer.steps=1 trainer.prompts_per_step=2 trainer.samples_per_prompt=2 "
          "trainer.micro_batch_size=4 trainer.checkpoint_every=1 data.eval_size=4 eval.every=0 eval.k=1 "
          "eval.max_problems=2 rollout.kv_cache_gb=0.25 logging.wandb=false logging.progress=false "
          "logging.probe_every=1 logging.probe_prompts=2")
_EVAL = "model.name=tiny-random data.eval_size=4 eval.k=1 eval.max_problems=2 rollout.kv_cache_gb=0.25"
_GEN = "--max-think 8 --max-answer 4 --max-model-len 256"
# (command pattern, where the shrink goes, what is added). "overrides": after the command's last key=value
# override (before its flags, as argparse needs); "end": appended.
SHRINK: list[tuple[str, str, str]] = [
    (r"rlreason train ", "overrides", _TRAIN),
    (r"rlreason eval ", "overrides", _EVAL),
    (r"bash scripts/quickstart\.sh", "end", _TRAIN),
    (r"rlreason probe data", "end", "--n-harmful 20 --n-harmless 20"),
    (r"rlreason probe traces", "end", f"--model tiny-random {_GEN}"),
    (r"rlreason probe capture", "end", "--model tiny-random"),
    (r"rlreason probe heads", "end", f"--n-traces 2 --n-eval 2 {_GEN}"),
    (r"rlreason repair", "end", f"--model tiny-random --n-eval 2 --epochs 1 --max-len 128 {_GEN}"),
    (r"rlreason data export source=", "end", ""),
]

LANG_SHELL, LANG_PYTHON = ("bash", "sh", "shell"), ("python", "py")


# --- reading the docs ------------------------------------------------------------------------------------

def fenced_blocks(text: str) -> list[tuple[str, str, int]]:
    """(language, body, line number of the opening fence) of every ``` block."""
    out, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = re.match(r"^\s*```(\S*)\s*$", lines[i])
        if m:
            start, body = i + 1, []
            i += 1
            while i < len(lines) and not re.match(r"^\s*```\s*$", lines[i]):
                body.append(lines[i])
                i += 1
            out.append((m.group(1).lower(), "\n".join(body), start))
        i += 1
    return out


def shell_commands(body: str, first_line: int) -> list[tuple[str, int]]:
    """Commands of a shell block: continuation lines joined, blank and comment-only lines dropped."""
    cmds, buf, start = [], "", 0
    for k, line in enumerate(body.splitlines()):
        if not buf:
            start = first_line + k + 1
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        cmd = (buf + line).strip()
        buf = ""
        if cmd and not cmd.startswith("#"):
            cmds.append((cmd, start))
    return cmds


def strip_comment(cmd: str) -> str:
    """`cmd args   # note` -> `cmd args` (docs do not put # inside quotes)."""
    return re.sub(r"\s+#.*$", "", cmd).strip()


def skip_reason(cmd: str) -> str | None:
    return next((why for pat, why in SKIP.items() if re.match(pat, cmd)), None)


def shrink(cmd: str) -> str:
    cmd = strip_comment(cmd)
    for pat, where, extra in SHRINK:
        if not re.match(pat, cmd) or not extra:
            continue
        if where == "end":
            return f"{cmd} {extra}"
        tokens = cmd.split(" ")
        # after `rlreason train|eval CONFIG` and the key=value overrides that follow it
        j = 3
        while j < len(tokens) and "=" in tokens[j] and not tokens[j].startswith("-"):
            j += 1
        return " ".join(tokens[:j] + extra.split() + tokens[j:])
    return cmd


def doc_commands(doc: Path) -> list[tuple[str, int]]:
    return [c for lang, body, line in fenced_blocks(doc.read_text()) if lang in LANG_SHELL
            for c in shell_commands(body, line)]


# --- fast checks: the helpers above, links, paths, nothing outside the repository ------------------------

def test_shrink_puts_overrides_before_flags_and_after_the_docs_own():
    assert shrink("rlreason train configs/q.yaml trainer.steps=10   # dotted overrides").startswith(
        "rlreason train configs/q.yaml trainer.steps=10 model.name=tiny-random trainer.steps=1")
    assert shrink("rlreason eval configs/q.yaml --checkpoint latest").endswith("eval.max_problems=2 "
                                                                              "rollout.kv_cache_gb=0.25 --checkpoint latest")
    assert shell_commands("a \\\n  b  # c\n# only a comment\n\nd", 10) == [("a    b  # c", 11), ("d", 15)]
    assert skip_reason("bash scripts/test.sh") and not skip_reason("rlreason models list")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces -> hyphens."""
    h = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", h))


def _anchors(path: Path) -> set[str]:
    return {_slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", path.read_text(), re.M)}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_relative_links_resolve(doc):
    broken = []
    text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto
        file_part, _, anchor = target.partition("#")
        path = (doc.parent / file_part).resolve() if file_part else doc
        if not path.exists():
            broken.append(f"{target}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
            broken.append(f"{target}: no heading '#{anchor}' in {path.name}")
    assert not broken, f"{doc.name}: " + "; ".join(broken)


_REPO_PATH = re.compile(r"`((?:rlreason|environments|rewards|configs|benchmarks|launch|scripts|tests|docs|"
                        r"requirements)/[\w./{},-]*)`")


def _expand(path: str) -> list[str]:
    m = re.search(r"\{([^}]*)\}", path)
    if not m:
        return [path]
    return [q for alt in m.group(1).split(",") for q in _expand(path[:m.start()] + alt + path[m.end():])]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_repository_paths_named_in_docs_exist(doc):
    missing = [p for m in _REPO_PATH.finditer(doc.read_text()) for p in _expand(m.group(1))
               if not (REPO / p).exists() and not (REPO / "benchmarks/results" / p).exists()]
    assert not missing, f"{doc.name} names paths that do not exist: {missing}"


def _tracked_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout.split("\n")
    return [REPO / f for f in out if f and (REPO / f).is_file()]


def test_nothing_points_outside_the_repository():
    """Engineers' design notes live outside the repository; users do not have them."""
    notes = "|".join(["METHODS", "DESIGN", "CPU_STACK", "STYLE", "EXPERIMENTS"])
    pattern = re.compile(r"\.\./shared|shared/(" + notes + r")|\b(" + notes + r")\.md")
    hits = []
    for f in _tracked_files():
        if f.suffix in (".png", ".safetensors", ".parquet", ".gguf"):
            continue
        for n, line in enumerate(f.read_text(errors="replace").splitlines(), 1):
            if pattern.search(line):
                hits.append(f"{f.relative_to(REPO)}:{n}")
    assert not hits, "references to notes outside the repository: " + ", ".join(hits)


def test_code_comments_describe_code_not_issue_history():
    banner = re.compile(r"#.*(\bissue\s*#?\d+|--- *(end )?issue)", re.I)
    hits = [f"{f.relative_to(REPO)}:{n}" for f in _tracked_files() if f.suffix in (".py", ".sh", ".yaml", ".toml", ".txt")
            for n, line in enumerate(f.read_text(errors="replace").splitlines(), 1) if banner.search(line)]
    assert not hits, "issue banners/references in code: " + ", ".join(hits)


def test_skip_list_has_no_stale_entries():
    """Every SKIP entry matches a documented command (anything else a stale entry would one day hide)."""
    cmds = [strip_comment(c) for d in DOCS for c, _ in doc_commands(d)]
    unused = [pat for pat in SKIP if not any(re.match(pat, c) for c in cmds)]
    assert not unused, f"SKIP entries matching no documented command: {unused}"


# --- slow: run them ---------------------------------------------------------------------------------------

def _scratch_copy(dst: Path) -> Path:
    for f in _tracked_files():
        rel = f.relative_to(REPO)
        if rel.parts[0] in ("runs", ".venv", ".venv-verl"):
            continue
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, dst / rel)
    venv = Path(sys.prefix)
    (dst / ".venv").symlink_to(venv if (venv / "bin" / "activate").exists() else REPO / ".venv")
    if (REPO / ".venv-verl").exists():
        (dst / ".venv-verl").symlink_to(REPO / ".venv-verl")
    return dst


def _setup_is_current(root: Path) -> bool:
    """scripts/setup.sh would only re-check (not reinstall) the linked venv: its stamp matches."""
    h = hashlib.sha256()
    for f in [root / "pyproject.toml", *sorted((root / "requirements").glob("*.txt")), root / "scripts/setup.sh"]:
        h.update(f.read_bytes())
    stamps = list((root / ".venv").glob(".rlreason-setup-*"))
    return any(s.read_text().strip() == h.hexdigest()[:16] for s in stamps)


# Commands that run scripts/setup.sh (directly or through quickstart.sh): with a stale stamp they would
# `pip install -e` the scratch copy into the linked, shared .venv and leave it pointing at a deleted tmp dir.
_SETUP = re.compile(r"^(bash\s+)?(\./)?scripts/(setup|quickstart)\.sh\b")


def runs_setup(cmd: str) -> bool:
    return bool(_SETUP.match(cmd.strip()))


def test_commands_that_run_setup_are_recognised():
    for cmd in ("bash scripts/setup.sh", "scripts/setup.sh", "./scripts/setup.sh", "bash scripts/quickstart.sh x=1"):
        assert runs_setup(cmd), cmd
    for cmd in ("bash scripts/setup_verl_venv.sh", "rlreason train configs/quickstart.yaml", "cat scripts/setup.sh"):
        assert not runs_setup(cmd), cmd


def _has_code(doc: Path) -> bool:
    return any(lang in LANG_SHELL + LANG_PYTHON for lang, _, _ in fenced_blocks(doc.read_text()))


@pytest.mark.slow
@pytest.mark.parametrize("doc", [d for d in DOCS if _has_code(d)], ids=lambda p: p.name)
def test_doc_commands(doc, tmp_path):
    root = _scratch_copy(tmp_path / "repo")
    lines, ran = ["set -eo pipefail"], []
    python_blocks = [(body, line) for lang, body, line in fenced_blocks(doc.read_text()) if lang in LANG_PYTHON]
    for cmd, line in doc_commands(doc):
        if skip_reason(cmd):
            continue
        if runs_setup(cmd) and not _setup_is_current(root):
            warnings.warn(f"docs test: `{cmd}` not run: the venv's setup stamp is stale (run scripts/setup.sh); "
                          "it would reinstall the shared venv's editable rlreason from the scratch copy")
            continue
        run = shrink(cmd)
        ran.append(run)
        lines += [f"echo '>>> {doc.name}:{line}: {run}' >&2", run]
    assert ran or python_blocks, f"{doc.name}: every command is in SKIP"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "VIRTUAL_ENV"))}
    env.update(PYTHONPATH=str(root), WANDB_MODE="offline", PATH=f"{root / '.venv' / 'bin'}:{env.get('PATH', '')}")
    failures = []
    if ran:
        script = root / "doc_commands.sh"
        script.write_text("\n".join(lines) + "\n")
        p = subprocess.run(["bash", str(script)], cwd=root, env=env, capture_output=True, text=True, timeout=1200)
        if p.returncode != 0:
            last = [ln for ln in p.stderr.splitlines() if ln.startswith(">>> ")][-1:]
            failures.append(f"{last[0][4:] if last else doc.name} exited {p.returncode}:\n"
                            + "\n".join(p.stderr.splitlines()[-25:]))
    for body, line in python_blocks:
        p = subprocess.run([str(root / ".venv" / "bin" / "python"), "-c", body], cwd=root, env=env,
                           capture_output=True, text=True, timeout=600)
        if p.returncode != 0:
            failures.append(f"{doc.name}:{line}: python block exited {p.returncode}:\n{p.stderr[-2000:]}")
    assert not failures, "\n\n".join(failures)
