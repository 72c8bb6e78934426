"""Prompt sampler resumability and atomic checkpoints."""

import json
import random

import pytest
import torch

from rlreason.trainer.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from rlreason.trainer.sampler import PromptSampler


def test_sampler_covers_epoch_and_resumes_identically():
    a = PromptSampler(10, seed=3)
    first = a.next_indices(10)
    assert sorted(first) == list(range(10))  # one epoch = a permutation
    a.next_indices(4)
    state = a.state_dict()
    expected = a.next_indices(12)  # crosses into epoch 2
    b = PromptSampler(10, seed=3)
    b.load_state_dict(json.loads(json.dumps(state)))
    assert b.next_indices(12) == expected
    assert PromptSampler(10, seed=4).next_indices(10) != first


def test_sampler_refuses_changed_data():
    s = PromptSampler(10, seed=0).state_dict()
    with pytest.raises(ValueError, match="data changed"):
        PromptSampler(11, seed=0).load_state_dict(s)


def test_checkpoint_roundtrip_and_pruning(tmp_path):
    torch.manual_seed(0)
    m = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(m.parameters(), lr=0.1)
    m(torch.randn(4, 3)).sum().backward()
    opt.step()
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, model=m, torch_state={"optimizer": opt.state_dict()},
                        state={"x": step}, keep=2)
    assert sorted(p.name for p in tmp_path.glob("step_*")) == ["step_000002", "step_000003"]
    path = latest_checkpoint(tmp_path)
    assert path.name == "step_000003"
    random.random()
    torch.rand(1)
    m2 = torch.nn.Linear(3, 2)
    state, blob = load_checkpoint(path, model=m2)
    assert state == {"step": 3, "x": 3}
    assert torch.equal(m2.weight, m.weight)
    opt2 = torch.optim.AdamW(m2.parameters(), lr=0.1)
    opt2.load_state_dict(blob["optimizer"])
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


def test_half_written_checkpoint_is_ignored(tmp_path):
    m = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    save_checkpoint(tmp_path, 1, model=m, torch_state={"optimizer": opt.state_dict()}, state={}, keep=3)
    (tmp_path / ".step_000002.tmp").mkdir()  # a kill mid-write leaves only a temp dir
    assert latest_checkpoint(tmp_path).name == "step_000001"
