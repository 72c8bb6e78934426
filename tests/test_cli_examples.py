"""The README's command-line examples as a new user types them: `rlreason eval --checkpoint` with a wrong
path or `latest`, `rlreason data` without a seed, `--show` saying when it prints part of the rows."""

import json

from rlreason.cli import main


def _fake_checkpoint(root, step):
    d = root / f"step_{step:06d}"
    d.mkdir(parents=True)
    (d / "model.safetensors").write_bytes(b"")
    return d


def test_eval_wrong_checkpoint_lists_existing_ones_before_loading(tmp_path, capsys, monkeypatch):
    import rlreason.trainer.loop as loop
    monkeypatch.setattr(loop, "setup", lambda cfg: (_ for _ in ()).throw(AssertionError("model loaded")))
    ckpts = tmp_path / "checkpoints"
    for s in (20, 30):
        _fake_checkpoint(ckpts, s)
    code = main(["eval", "configs/quickstart.yaml", f"output_dir={tmp_path}",
                 "--checkpoint", str(ckpts / "step_000040")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert "step_000040" in err and "step_000020, step_000030" in err and "latest" in err


def test_eval_checkpoint_latest_resolves_to_the_newest(tmp_path):
    from rlreason.config import load_config
    from rlreason.eval_cli import CheckpointNotFound, resolve_checkpoint
    cfg = load_config("configs/quickstart.yaml", [f"output_dir={tmp_path}"])
    try:
        resolve_checkpoint(cfg, "latest")
        raise AssertionError("no checkpoint yet: must raise")
    except CheckpointNotFound as e:
        assert "no complete checkpoint" in str(e)
    ckpts = tmp_path / "checkpoints"
    _fake_checkpoint(ckpts, 20)
    newest = _fake_checkpoint(ckpts, 30)
    (ckpts / "latest.json").write_text(json.dumps({"step": 30, "path": newest.name}))
    assert resolve_checkpoint(cfg, "latest") == str(newest)
    assert resolve_checkpoint(cfg, str(newest)) == str(newest)
    assert resolve_checkpoint(cfg, None) is None


def test_data_without_seed_uses_the_documented_default(capsys):
    assert main(["data", "source=reasoning_gym", "task=basic_arithmetic", "size=5"]) == 0
    out = capsys.readouterr().out
    assert out.count('"question"') == 3
    assert "showing 3 of 5 rows" in out


def test_data_seed_default_is_zero():
    from rlreason.data import build_dataset
    a = build_dataset({"source": "reasoning_gym", "task": "basic_arithmetic", "size": 4})
    b = build_dataset({"source": "reasoning_gym", "task": "basic_arithmetic", "size": 4, "seed": 0})
    assert a["question"] == b["question"]


def test_help_examples_parse_and_name_no_missing_checkpoint():
    """`rlreason --help` shows examples; each must parse, and a --checkpoint example must work on a fresh
    run (`latest`), not name a step the documented runs never make."""
    import re
    import shlex

    import rlreason.cli as cli
    examples = [re.sub(r"\s+#.*$", "", ln.strip()) for ln in cli.__doc__.splitlines()
                if ln.strip().startswith("rlreason ")]
    assert examples
    for ex in examples:
        args = cli.build_parser().parse_args(shlex.split(ex)[1:])
        if getattr(args, "checkpoint", None):
            assert args.checkpoint == "latest", ex
