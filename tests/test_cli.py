"""The command line: --help everywhere, config errors are one clear line with exit code 2."""

import subprocess
import sys

import pytest

from rlreason.cli import build_parser, main


@pytest.mark.parametrize("cmd", [[], ["train"], ["eval"], ["models"], ["data"], ["config"]])
def test_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args([*cmd, "--help"])
    assert e.value.code == 0
    assert "usage: rlreason" in capsys.readouterr().out


def test_config_typo_is_a_clear_error(capsys):
    assert main(["config", "show", "configs/quickstart.yaml", "trainer.lrr=1"]) == 2
    err = capsys.readouterr().err
    assert "config error: trainer.lrr: unknown key" in err and "Did you mean 'lr'" in err


def test_config_show_merges_overrides(capsys):
    assert main(["config", "show", "configs/quickstart.yaml", "trainer.steps=3"]) == 0
    out = capsys.readouterr().out
    assert "steps: 3" in out and "name: quickstart" in out


def test_config_keys_lists_help():
    out = subprocess.run([sys.executable, "-m", "rlreason.cli", "config", "keys"], capture_output=True, text=True,
                         env={"RLREASON_NO_PRELOAD": "1", "PATH": ""}).stdout
    assert "trainer.lr = 1e-06" in out and "# a name from `rlreason models list`" in out


def test_data_preview(capsys):
    assert main(["data", "source=reasoning_gym", "task=basic_arithmetic", "size=2", "seed=0", "--show", "2"]) == 0
    assert capsys.readouterr().out.count('"question"') == 2
