"""Runs that are never lost or silently restarted: checkpoints that load without running code, checksums that
catch corruption, resume that finds the newest complete checkpoint, logs that stay consistent, atomic writes,
strict checkpoint loading in eval, a run directory checked before anything slow, and `--resume` continuing
the run's stored config. All on CPU with small modules; nothing loads a model."""

import errno
import hashlib
import json
import logging
import os
import stat

import pytest
import torch

import rlreason.trainer.checkpoint as ckpt_mod
from rlreason.config import load_config
from rlreason.registry import ConfigError
from rlreason.trainer.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from rlreason.trainer.metrics import MetricsLogger


def _model_opt():
    torch.manual_seed(0)
    m = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(m.parameters(), lr=0.1)
    m(torch.randn(4, 3)).sum().backward()
    opt.step()
    return m, opt


def _save(root, *steps, keep=5):
    m, opt = _model_opt()
    for s in steps:
        save_checkpoint(root, s, model=m, torch_state={"optimizer": opt.state_dict()}, state={"x": s}, keep=keep)
    return m


def _rehash(step_dir):
    """What an attacker (or a careless edit) would do: make state.json's checksums agree with the files."""
    state = json.loads((step_dir / "state.json").read_text())
    if "files" in state:
        state["files"] = {n: hashlib.sha256((step_dir / n).read_bytes()).hexdigest() for n in state["files"]}
        (step_dir / "state.json").write_text(json.dumps(state))


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


# --- 1. no pickle code execution ----------------------------------------------------------------------------

def test_pickle_payload_in_trainer_pt_is_refused_and_does_not_run(tmp_path):
    root = tmp_path / "ck"
    _save(root, 1)
    step = root / "step_000001"
    marker = tmp_path / "payload_ran"
    torch.save({"optimizer": _Payload(marker)}, step / "trainer.pt")
    _rehash(step)
    with pytest.raises(Exception) as e:
        load_checkpoint(step, model=torch.nn.Linear(3, 2))
    assert not marker.exists(), "the pickle payload ran"
    assert isinstance(e.value, ConfigError)
    assert "trainer.pt" in str(e.value) and "refus" in str(e.value)


def test_trainer_state_loads_with_weights_only(tmp_path):
    """Every file a checkpoint holds loads without unpickling arbitrary objects (RNG state included)."""
    _save(tmp_path, 1)
    torch.load(tmp_path / "step_000001" / "trainer.pt", weights_only=True)


# --- 2. never restart silently over an existing run ---------------------------------------------------------

@pytest.mark.parametrize("marker", ["missing", "garbage"])
def test_resume_without_a_readable_latest_json_finds_the_newest_complete_checkpoint(tmp_path, marker, caplog):
    _save(tmp_path, 1, 2)
    if marker == "missing":
        (tmp_path / "latest.json").unlink()
    else:
        (tmp_path / "latest.json").write_text('{"step": 2, "pa')
    with caplog.at_level(logging.WARNING):
        assert latest_checkpoint(tmp_path).name == "step_000002"
    assert "latest.json" in caplog.text


def test_resume_fails_naming_the_path_when_no_checkpoint_is_complete(tmp_path):
    _save(tmp_path, 1)
    (tmp_path / "latest.json").unlink()
    (tmp_path / "step_000001" / "model.safetensors").write_bytes(b"")
    with pytest.raises(ConfigError, match=str(tmp_path)):
        latest_checkpoint(tmp_path)


@pytest.fixture
def no_model_load(monkeypatch):
    """Model loading must not start before the run directory is checked."""
    import rlreason.models

    def boom(*a, **k):
        raise AssertionError("the model started loading before the run directory was checked")
    monkeypatch.setattr(rlreason.models, "resolve_model", boom)


def _cfg(out, *extra):
    return load_config(None, ["model.name=tiny-random", "logging.wandb=false", f"output_dir={out}", *extra])


def test_fresh_start_in_a_run_directory_with_checkpoints_is_refused(tmp_path, no_model_load):
    from rlreason.trainer.loop import train
    _save(tmp_path / "run" / "checkpoints", 1)
    with pytest.raises(ConfigError) as e:
        train(_cfg(tmp_path / "run"))
    msg = str(e.value)
    assert "--resume" in msg and "--overwrite" in msg and str(tmp_path / "run") in msg and "\n" not in msg
    assert (tmp_path / "run" / "checkpoints" / "step_000001").exists()


def test_overwrite_clears_the_old_run(tmp_path):
    from rlreason.trainer.run_dir import prepare_run_dir
    run = tmp_path / "run"
    _save(run / "checkpoints", 1)
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    (run / "notes.txt").write_text("mine")
    prepare_run_dir(_cfg(run), resume=False, overwrite=True)
    assert not (run / "checkpoints").exists() and not (run / "metrics.jsonl").exists()
    assert (run / "notes.txt").read_text() == "mine"  # only what a run writes is removed


# --- 3. corruption is detected and survived -----------------------------------------------------------------

def test_state_json_records_a_sha256_per_file(tmp_path):
    _save(tmp_path, 1)
    step = tmp_path / "step_000001"
    files = json.loads((step / "state.json").read_text())["files"]
    assert set(files) == {p.name for p in step.iterdir()} - {"state.json"}
    for name, digest in files.items():
        assert hashlib.sha256((step / name).read_bytes()).hexdigest() == digest


@pytest.mark.parametrize("damage", ["truncate", "zero", "flip"])
@pytest.mark.parametrize("name", ["model.safetensors", "trainer.pt"])
def test_a_damaged_latest_checkpoint_is_reported_and_the_previous_one_used(tmp_path, damage, name, caplog):
    _save(tmp_path, 1, 2)
    f = tmp_path / "step_000002" / name
    data = f.read_bytes()
    f.write_bytes({"truncate": data[: len(data) // 2], "zero": bytes(len(data)),
                   "flip": data[:-1] + bytes([data[-1] ^ 1])}[damage])
    with caplog.at_level(logging.WARNING):
        path = latest_checkpoint(tmp_path)
    assert path.name == "step_000001"
    assert str(f) in caplog.text


def test_invalid_state_json_names_the_file_and_falls_back(tmp_path, caplog):
    _save(tmp_path, 1, 2)
    bad = tmp_path / "step_000002" / "state.json"
    bad.write_text('{"step": 2,')
    with caplog.at_level(logging.WARNING):
        assert latest_checkpoint(tmp_path).name == "step_000001"
    assert str(bad) in caplog.text and "JSON" in caplog.text
    with pytest.raises(ConfigError, match="state.json"):
        load_checkpoint(tmp_path / "step_000002", model=torch.nn.Linear(3, 2))


# --- 4. logs stay consistent --------------------------------------------------------------------------------

def _rows(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def _logger(run, resume=True):
    return MetricsLogger(run, config={}, use_wandb=False, project="p", name="n", resume=resume)


def test_resume_truncates_samples_and_drops_a_torn_metrics_line(tmp_path, caplog):
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "r": s}) + "\n" for s in (1, 2, 3))
                                            + '{"step": 4, "r"')
    (tmp_path / "samples.jsonl").write_text("".join(json.dumps({"step": s, "t": "x"}) + "\n" for s in (1, 2, 2, 3)))
    with caplog.at_level(logging.WARNING):
        lg = _logger(tmp_path)
    assert "metrics.jsonl" in caplog.text and "torn" in caplog.text
    lg.truncate_after(2)
    assert [r["step"] for r in _rows(tmp_path / "metrics.jsonl")] == [1, 2]
    assert [r["step"] for r in _rows(tmp_path / "samples.jsonl")] == [1, 2, 2]


def test_resume_without_metrics_jsonl_warns(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        _logger(tmp_path)
    assert "metrics.jsonl" in caplog.text


# --- 5. atomicity -------------------------------------------------------------------------------------------

def test_latest_json_is_fsynced_with_its_directory(tmp_path, monkeypatch):
    _save(tmp_path, 1)
    synced = []
    real = os.fsync

    def spy(fd):
        st = os.fstat(fd)
        synced.append((stat.S_ISDIR(st.st_mode), st.st_ino))
        return real(fd)
    monkeypatch.setattr(os, "fsync", spy)
    _save(tmp_path, 2)
    latest_ino = (tmp_path / "latest.json").stat().st_ino
    assert (False, latest_ino) in synced, "latest.json was not fsynced"
    assert (True, tmp_path.stat().st_ino) in synced, "the checkpoint directory was not fsynced"


def test_old_step_directory_survives_a_failed_replacement(tmp_path, monkeypatch):
    m = _save(tmp_path, 1)
    before = (tmp_path / "step_000001" / "model.safetensors").read_bytes()
    real = os.replace

    def failing(src, dst):
        if str(src).endswith(".tmp") and os.path.basename(str(dst)).startswith("step_"):
            raise OSError(errno.EIO, "I/O error", str(dst))
        return real(src, dst)
    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path, 1, model=m, torch_state={}, state={}, keep=5)
    assert (tmp_path / "step_000001" / "model.safetensors").read_bytes() == before
    assert not list(tmp_path.glob(".*"))


def test_disk_full_says_no_space_left_and_leaves_no_tmp(tmp_path, monkeypatch):
    m = _save(tmp_path, 1)

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(ckpt_mod, "save_file", full)
    with pytest.raises(Exception) as e:
        save_checkpoint(tmp_path, 2, model=m, torch_state={}, state={}, keep=5)
    assert f"no space left on {tmp_path}" in str(e.value)
    assert not list(tmp_path.glob(".*")), "a temporary directory was left behind"
    assert json.loads((tmp_path / "latest.json").read_text())["path"] == "step_000001"


# --- 6. eval loads checkpoints strictly -----------------------------------------------------------------------

def test_eval_refuses_a_checkpoint_that_does_not_match_the_model(tmp_path, monkeypatch):
    import types

    import rlreason.trainer.loop as loop
    from rlreason.eval_cli import load_for_eval
    _save(tmp_path / "ck", 1)  # a Linear(3, 2): nothing like the model below
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    synced = []
    fake = types.SimpleNamespace(ctx=types.SimpleNamespace(model=model), eval_rows=[],
                                 engine=types.SimpleNamespace(update_weights=lambda w: synced.append(1)))
    monkeypatch.setattr(loop, "setup", lambda cfg, **k: fake)
    with pytest.raises(ConfigError, match="model.safetensors"):
        load_for_eval(_cfg(tmp_path / "run"), str(tmp_path / "ck" / "step_000001"), "eval")
    assert not synced


# --- 7. the run directory is checked first ------------------------------------------------------------------

def test_unwritable_run_directory_fails_before_the_model_loads(tmp_path, no_model_load):
    from rlreason.trainer.loop import train
    (tmp_path / "file").write_text("")  # a file where a directory should be
    with pytest.raises(ConfigError, match="output_dir"):
        train(_cfg(tmp_path / "file" / "run"))


@pytest.mark.parametrize("override", ["name=../../escaped", "output_dir=../escaped", "output_dir=runs/../../x"])
def test_run_directory_escaping_the_runs_folder_is_rejected(tmp_path, override, no_model_load, monkeypatch):
    from rlreason.trainer.loop import train
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, ["model.name=tiny-random", "logging.wandb=false", override])
    with pytest.raises(ConfigError, match=override.split("=")[0]):
        train(cfg)
    assert not (tmp_path.parent / "escaped").exists()


def test_explicit_absolute_output_dir_is_allowed(tmp_path):
    from rlreason.trainer.run_dir import prepare_run_dir
    out = tmp_path / "a" / ".." / "b"
    prepare_run_dir(_cfg(out), resume=False, overwrite=False)
    assert (tmp_path / "b").is_dir()


# --- 9. --resume anywhere on the command line ---------------------------------------------------------------

@pytest.fixture
def captured_train(monkeypatch):
    import rlreason.trainer.loop as loop
    calls = []
    monkeypatch.setattr(loop, "train", lambda cfg, **k: calls.append((cfg, k)) or "summary")
    return calls


def test_resume_flag_is_accepted_after_overrides(tmp_path, captured_train):
    from rlreason.cli import main
    assert main(["train", "--resume", "model.name=tiny-random", f"output_dir={tmp_path}/r"]) == 0
    assert main(["train", "model.name=tiny-random", "--resume", f"output_dir={tmp_path}/r", "trainer.steps=7"]) == 0
    cfg, kw = captured_train[-1]
    assert kw["resume"] and cfg.trainer.steps == 7 and cfg.run_dir == tmp_path / "r"


# --- --resume continues the run's stored config ----------------------------------------------------------

def _yaml(tmp_path, lr, steps):
    p = tmp_path / "c.yaml"
    p.write_text(f"model: {{name: tiny-random}}\noutput_dir: {tmp_path}/run\n"
                 f"trainer: {{lr: {lr}, steps: {steps}}}\nlogging: {{wandb: false}}\n")
    return str(p)


def test_resume_continues_the_stored_config_and_applies_overrides_as_a_diff(tmp_path, captured_train, capsys):
    from rlreason.cli import main
    from rlreason.trainer.run_dir import prepare_run_dir
    started = load_config(_yaml(tmp_path, 2e-5, 30), ["trainer.lr=1e-5", "trainer.steps=10"])
    prepare_run_dir(started, resume=False, overwrite=False)  # what `rlreason train ... lr=1e-5 steps=10` stores
    assert main(["train", _yaml(tmp_path, 2e-5, 30), "--resume", "trainer.steps=20"]) == 0
    cfg, _ = captured_train[-1]
    assert cfg.trainer.lr == 1e-5  # the run's value, not the YAML's 2e-5
    assert cfg.trainer.steps == 20  # the explicit override
    prepare_run_dir(cfg, resume=True, overwrite=False)
    err = capsys.readouterr().err
    assert "trainer.steps: 10 -> 20" in err and "trainer.lr" in err  # the diff, and the YAML value not taken


@pytest.mark.parametrize("change", ["model.name=smollm2-135m-instruct", "env.name=markovian",
                                    "trainer.samples_per_prompt=3"])
def test_resume_refuses_changes_that_cannot_happen_mid_run(tmp_path, change, no_model_load):
    from rlreason.trainer.loop import train
    from rlreason.trainer.run_dir import prepare_run_dir
    prepare_run_dir(_cfg(tmp_path / "run"), resume=False, overwrite=False)
    with pytest.raises(ConfigError) as e:
        train(_cfg(tmp_path / "run", change), resume=True)
    assert change.split("=")[0] in str(e.value) and "\n" not in str(e.value)


def test_resume_with_a_new_lr_applies_it_to_the_restored_optimizer(tmp_path):
    """`--resume trainer.lr=...` is printed as a change, so it must change the run: the optimizer and
    scheduler state restored from the checkpoint carry the old learning rate."""
    import types

    from rlreason.trainer.loop import restore

    def parts(lr):
        torch.manual_seed(0)
        m = torch.nn.Linear(3, 2)
        opt = torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=0.0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 4))
        return m, opt, sched
    m, opt, sched = parts(1e-3)
    m(torch.randn(4, 3)).sum().backward()
    opt.step()
    sched.step()
    save_checkpoint(tmp_path / "run" / "checkpoints", 1, model=m,
                    torch_state={"optimizer": opt.state_dict(), "scheduler": sched.state_dict()},
                    state={"sampler": {}, "env": {}, "rewards": {}}, keep=2)
    m2, opt2, sched2 = parts(2e-3)  # what setup builds from the resumed config
    noop = types.SimpleNamespace(load_state_dict=lambda s: None)
    from rlreason.trainer.algorithm import make_algorithm
    cfg = _cfg(tmp_path / "run", "trainer.lr=2e-3", "trainer.weight_decay=0.1")
    run = types.SimpleNamespace(cfg=cfg, algorithm=make_algorithm(cfg),
                                ctx=types.SimpleNamespace(model=m2, optimizer=opt2, scheduler=sched2, value_head=None),
                                sampler=noop, env=noop, rubric=noop, logger=_logger(tmp_path / "run"), step=0)
    restore(run)
    assert run.step == 1 and sched2.last_epoch == 1
    assert opt2.param_groups[0]["lr"] == pytest.approx(2e-3 * 0.5)  # warmup factor at step 1
    assert opt2.param_groups[0]["weight_decay"] == 0.1
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


def test_resume_with_only_damaged_checkpoints_fails_before_the_model_loads(tmp_path, no_model_load):
    from rlreason.trainer.loop import train
    _save(tmp_path / "run" / "checkpoints", 1)
    bad = tmp_path / "run" / "checkpoints" / "step_000001" / "trainer.pt"
    bad.write_bytes(b"\0" * 10)
    with pytest.raises(ConfigError, match=str(bad)):
        train(_cfg(tmp_path / "run"), resume=True)
