"""Every user error at the command line is one line on stderr, exit code 2 and no traceback, naming its
source (config key, file and line); RLREASON_DEBUG=1 or --debug brings the traceback back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlreason.config import load_config
from rlreason.registry import ConfigError

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str, debug: bool = False, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = dict(os.environ, RLREASON_NO_PRELOAD="1", PYTHONPATH=str(REPO))
    env.pop("RLREASON_DEBUG", None)
    if debug:
        env["RLREASON_DEBUG"] = "1"
    return subprocess.run([sys.executable, "-m", "rlreason.cli", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=120)


def one_line_error(r: subprocess.CompletedProcess) -> str:
    err = r.stderr.strip()
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in err and len(err.splitlines()) == 1, err[-2000:]
    return err


def test_yaml_syntax_error_names_file_line_and_column(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntrainer: {steps: 2\nseed: 1\n")
    err = one_line_error(cli("config", "show", str(bad)))
    assert str(bad) in err and "line" in err and "column" in err


def test_missing_defaults_file_and_defaults_cycle(tmp_path):
    (tmp_path / "a.yaml").write_text("defaults: missing.yaml\nname: a\n")
    err = one_line_error(cli("config", "show", str(tmp_path / "a.yaml")))
    assert "missing.yaml" in err and "defaults" in err
    (tmp_path / "b.yaml").write_text("defaults: c.yaml\nname: b\n")
    (tmp_path / "c.yaml").write_text("defaults: b.yaml\nseed: 3\n")
    err = one_line_error(cli("config", "show", str(tmp_path / "b.yaml")))
    assert "cycle" in err and "b.yaml" in err and "c.yaml" in err


def test_non_mapping_defaults_file(tmp_path):
    (tmp_path / "base.yaml").write_text("- 1\n- 2\n")
    (tmp_path / "top.yaml").write_text("defaults: base.yaml\n")
    err = one_line_error(cli("config", "show", str(tmp_path / "top.yaml")))
    assert "base.yaml" in err and "mapping" in err


def test_data_errors_are_one_line(tmp_path):
    f = tmp_path / "rows.jsonl"
    f.write_text(json.dumps({"question": "1+1?"}) + "\n")
    err = one_line_error(cli("data", "source=jsonl", f"path={f}"))
    assert f"{f}, line 1" in err and "answer" in err
    err = one_line_error(cli("data", "source=jsonl", f"path={tmp_path / 'nope.jsonl'}"))
    assert "nope.jsonl" in err


def test_non_utf8_data_names_file_and_line(tmp_path):
    f = tmp_path / "latin1.jsonl"
    f.write_bytes(json.dumps({"question": "a", "answer": "1"}).encode() + b"\n"
                  + b'{"question": "caf\xe9", "answer": "2"}\n')
    err = one_line_error(cli("data", "source=jsonl", f"path={f}"))
    assert f"{f}, line 2" in err and "UTF-8" in err


def test_deeply_nested_json_row_names_file_and_line(tmp_path):
    f = tmp_path / "deep.jsonl"
    f.write_text(json.dumps({"question": "a", "answer": "1"}) + "\n"
                 + '{"question": "b", "answer": "2", "x": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    err = one_line_error(cli("data", "source=jsonl", f"path={f}"))
    assert f"{f}, line 2" in err and "nested" in err


def test_debug_shows_the_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer: [\n")
    for r in (cli("config", "show", str(bad), debug=True), cli("--debug", "config", "show", str(bad))):
        assert r.returncode == 2 and "Traceback" in r.stderr


def test_rewards_list_of_names_is_accepted(tmp_path):
    from rlreason.rubric import Rubric
    cfg = tmp_path / "c.yaml"
    cfg.write_text("rewards: [math, {name: boxed_format, weight: 0.5}]\n")
    rewards = load_config(str(cfg)).rewards
    assert rewards == [{"name": "math"}, {"name": "boxed_format", "weight": 0.5}]
    assert [name for name, _, _ in Rubric(rewards).terms] == ["math", "boxed_format"]
    with pytest.raises(ConfigError, match=r"rewards\[0\]"):
        load_config(None, ["rewards=[3]"])


def test_eval_size_error_names_the_config_key():
    from rlreason.data import build_dataset, train_test_split
    ds = build_dataset({"source": "reasoning_gym", "task": "basic_arithmetic", "size": 4, "seed": 0})
    with pytest.raises(ConfigError, match=r"^data\.eval_size: "):
        train_test_split(ds, test_size=10, seed=0)


def test_near_miss_model_name_is_an_error_not_a_hub_lookup():
    from rlreason.models import resolve_model
    with pytest.raises(ConfigError, match="Did you mean 'smollm2-135m-instruct'"):
        resolve_model("smollm2-135m-instrct")
    assert resolve_model("HuggingFaceTB/SmolLM2-360M-Instruct") == "HuggingFaceTB/SmolLM2-360M-Instruct"
    with pytest.raises(ConfigError, match="local directory './no/such/model' does not exist"):
        resolve_model("./no/such/model")


def test_duplicate_yaml_key_and_unparsable_values_are_errors(tmp_path):
    dup = tmp_path / "dup.yaml"
    dup.write_text("trainer:\n  lr: 1.0e-6\n  steps: 3\n  lr: 1.0e-5\n")
    err = one_line_error(cli("config", "show", str(dup)))
    assert "line 4" in err and "'lr' given twice" in err
    huge = tmp_path / "huge.yaml"
    huge.write_text("trainer:\n  steps: " + "7" * 5000 + "\n")
    assert str(huge) in one_line_error(cli("config", "show", str(huge)))
    assert "trainer.steps" in one_line_error(cli("config", "show", "trainer.steps=" + "7" * 5000))
    assert "not valid YAML" in one_line_error(cli("config", "show", "trainer.steps=[1,"))
