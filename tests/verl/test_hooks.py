"""rlreason.verl.hooks: per-session advantages for multi-row (Delethink) episodes, checked against verl's
own V1 function where verl covers the case (GRPO), and the patch installed by the Ray worker hook."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from tensordict import TensorDict
from verl.protocol import DataProto
from verl.trainer.ppo.v1.utils import compute_advantage_for_multi_trajectories as verl_multi

from rlreason.algos import rloo
from rlreason.verl.hooks import env_metrics, make_advantage_fn, parse_keys, session_advantages

# 2 prompts x 3 sessions; session (a,1) has 3 chunks, (b,0) has 2; final rows carry the session reward.
KEYS = ["a_0_0", "a_1_0", "a_1_1", "a_1_2", "a_2_0", "b_0_0", "b_0_1", "b_1_0", "b_2_0"]
SESSION_REWARD = {"a_0": 1.0, "a_1": 0.0, "a_2": 0.0, "b_0": 2.0, "b_1": 0.0, "b_2": 4.0}
T = 5


def batch(env_flags: dict[str, str] | None = None):
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, T + 1, (len(KEYS),), generator=g)
    mask = (torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)).to(torch.float32)
    scores = torch.zeros(len(KEYS), T)
    for r, k in enumerate(KEYS):  # verl V1 copies the final reward to every row of a session
        scores[r, lengths[r] - 1] = SESSION_REWARD[k.rsplit("_", 1)[0]]
    td = TensorDict({"response_mask": mask, "token_level_scores": scores, "token_level_rewards": scores.clone()},
                    batch_size=len(KEYS))
    return DataProto(batch=td, non_tensor_batch={"uid": np.array([k.split("_")[0] for k in KEYS], dtype=object)})


def test_parse_keys():
    row_session, uids, final = parse_keys(KEYS)
    assert row_session == [0, 1, 1, 1, 2, 3, 3, 4, 5]
    assert uids == ["a", "a", "a", "b", "b", "b"]
    assert final == [True, False, False, True, True, False, True, True, True]


@pytest.mark.parametrize("norm", [True, False])
def test_grpo_sessions_match_verl_v1(norm):
    ours = make_advantage_fn(verl_multi)
    os.environ["RLREASON_VERL_SESSION_ADV"] = "1"
    try:
        a = ours(batch(), KEYS, "grpo", norm_adv_by_std_in_grpo=norm).batch["advantages"]
    finally:
        os.environ.pop("RLREASON_VERL_SESSION_ADV")
    b = verl_multi(batch(), KEYS, "grpo", norm_adv_by_std_in_grpo=norm).batch["advantages"]
    assert torch.allclose(a, b, atol=1e-5)


def test_rloo_sessions_count_each_episode_once():
    """verl 0.9.1 alone would treat the 3 chunks of session a_1 as 3 group members; the hook does not."""
    d = batch()
    adv = session_advantages(d.batch["token_level_scores"].sum(-1), d.batch["response_mask"], KEYS,
                             estimator="rloo")
    per_session = rloo(torch.tensor([1.0, 0.0, 0.0, 2.0, 0.0, 4.0]), torch.tensor([0, 0, 0, 1, 1, 1]))
    row_session, _, _ = parse_keys(KEYS)
    expected = per_session[row_session].unsqueeze(-1) * d.batch["response_mask"]
    assert torch.allclose(adv, expected.float(), atol=1e-6)
    # every chunk of a trace shares its advantage
    assert torch.allclose(adv[1][d.batch["response_mask"][1] > 0].unique(), adv[3][d.batch["response_mask"][3] > 0].unique())


def test_trace_norm_weights_rows_by_trace_length():
    d = batch()
    plain = session_advantages(d.batch["token_level_scores"].sum(-1), d.batch["response_mask"], KEYS, estimator="grpo")
    normed = session_advantages(d.batch["token_level_scores"].sum(-1), d.batch["response_mask"], KEYS,
                                estimator="grpo", trace_norm=True)
    row_session = torch.tensor(parse_keys(KEYS)[0])
    l = torch.zeros(6).index_add_(0, row_session, d.batch["response_mask"].sum(-1))
    w = (len(KEYS) / 6) / l[row_session]
    assert torch.allclose(normed, plain * w.unsqueeze(-1), atol=1e-6)


def test_env_metrics_reads_final_rows_only():
    efs = [{"rlreason_final": True, "reward_extra_info": {"env/x/chunks": 3.0, "reward/math": 1.0, "flag": True}},
           {"reward_extra_info": {"env/x/chunks": 99.0}},
           {"rlreason_final": True, "reward_extra_info": {"env/x/chunks": 1.0, "reward/math": 0.0}}, None]
    assert env_metrics(efs) == {"env/x/chunks": 2.0, "reward/math": 0.5}


def test_worker_hook_patches_the_v1_trainer_on_import():
    code = ("import sys; from rlreason.verl.hooks import setup_worker; setup_worker();"
            "assert 'verl.trainer.ppo.v1.trainer_base' not in sys.modules;"
            "import verl.trainer.ppo.v1.trainer_base as tb;"
            "assert tb.compute_advantage_for_multi_trajectories.rlreason_patched;"
            "assert tb.PPOTrainer._compute_metrics.rlreason_patched; print('patched')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "patched" in out.stdout
