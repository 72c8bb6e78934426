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
from rlreason.verl.hooks import env_metrics, make_advantage_fn, make_metrics_method, parse_keys, session_advantages

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


def test_worker_hook_imports_the_users_modules(tmp_path):
    """RLREASON_IMPORTS (from `imports:` / `--import`, emitted by rlreason verl-config) is imported by the
    setup hook in a fresh worker process, so a user's environment is registered before any lookup."""
    (tmp_path / "hk_user_env.py").write_text("from rlreason.registry import register_environment\n"
                                             "@register_environment('hk_user_env')\nclass UserEnv:\n    pass\n")
    code = ("from rlreason.registry import ENVIRONMENTS; assert 'hk_user_env' not in ENVIRONMENTS, 'already there';"
            "from rlreason.verl.hooks import setup_worker; setup_worker();"
            "assert 'hk_user_env' in ENVIRONMENTS, 'not registered'; print('registered')")
    env = dict(os.environ, RLREASON_IMPORTS="hk_user_env,json",
               PYTHONPATH=os.pathsep.join([str(tmp_path), *filter(None, [os.environ.get("PYTHONPATH")])]))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "registered" in out.stdout


def test_worker_hook_names_a_module_that_does_not_import(monkeypatch):
    from rlreason.registry import ConfigError
    from rlreason.verl.hooks import import_user_modules
    monkeypatch.setenv("RLREASON_IMPORTS", "json,no_such_user_module_xyz")
    with pytest.raises(ConfigError, match=r"RLREASON_IMPORTS\[1\].*no_such_user_module_xyz"):
        import_user_modules()
    monkeypatch.setenv("RLREASON_IMPORTS", "")
    assert import_user_modules() == []


# ---- metrics skip verl's padding rows --------------------------------------------------------------------

class FakeTQ:
    """TransferQueue's kv_batch_get over a dict of extra_fields by key."""

    def __init__(self, fields: dict[str, dict]) -> None:
        self.fields = fields

    def kv_batch_get(self, keys, partition_id, select_fields):
        return {"extra_fields": np.array([self.fields[k] for k in keys] + [None], dtype=object)[:-1]}


class FakeBatch:
    def __init__(self, keys, tags):
        self.keys, self.tags, self.partition_id = keys, tags, "train"


def test_env_metrics_skip_padding_rows():
    """verl's upsample_batch_to_divisible_size copies row 0's extra fields (final flag included) into each
    padding row; 3 sessions with solved = 1, 0, 0 must log 1/3, not (1 + 0 + 0 + 5) / 8 = 0.75."""
    real = {f"u{i}_0_0": {"rlreason_final": True, "reward_extra_info": {"env/x/solved": float(i == 0)}}
            for i in range(3)}
    pads = {f"padabc_{i}_0": dict(real["u0_0_0"]) for i in range(5)}
    batch = FakeBatch([*real, *pads], [{}] * 3 + [{"is_padding": True}] * 5)
    metrics: dict = {}
    method = make_metrics_method(lambda *a: None, FakeTQ({**real, **pads}))
    method(None, batch, metrics, {}, 1, 0)
    assert metrics["env/x/solved"] == pytest.approx(1 / 3)


def test_metrics_hook_does_not_swallow_errors():
    class Broken:
        def kv_batch_get(self, **kw):
            raise KeyError("extra_fields")
    with pytest.raises(KeyError):
        make_metrics_method(lambda *a: None, Broken())(None, FakeBatch(["a_0_0"], [{}]), {}, {}, 1, 0)


# ---- REINFORCE++ whitening: the same on both paths ---------------------------------------------------------

def test_reinforce_pp_matches_the_local_trainer_on_multi_chunk_sessions():
    """The local trainer calls ADVANTAGES[reinforce_pp_baseline](rewards, group_ids) with one entry per episode;
    the hook must give every chunk of a session exactly that (it used to weigh sessions by token count)."""
    from rlreason.algos.advantages import ADVANTAGES
    d = batch()
    mask = d.batch["response_mask"]
    adv = session_advantages(d.batch["token_level_scores"].sum(-1), mask, KEYS, estimator="reinforce_pp_baseline")
    local = ADVANTAGES.get("reinforce_pp_baseline")(torch.tensor([1.0, 0.0, 0.0, 2.0, 0.0, 4.0]),
                                                     torch.tensor([0, 0, 0, 1, 1, 1]), eps=1e-6)
    row_session, _, _ = parse_keys(KEYS)
    expected = local[row_session].unsqueeze(-1) * mask
    assert (adv - expected).abs().max() < 1e-6


def test_padding_sessions_do_not_enter_group_statistics():
    """verl's padding rows (uid pad<hex>, one session each, no response token) change no advantage."""
    d = batch()
    scores, mask = d.batch["token_level_scores"].sum(-1), d.batch["response_mask"]
    keys = KEYS + ["padff_0_0", "padff_1_0", "padff_2_0"]
    scores_p = torch.cat([scores, torch.zeros(3)])
    mask_p = torch.cat([mask, torch.zeros(3, T)])
    for est in ("grpo", "rloo", "reinforce_pp_baseline"):
        for tn in (False, True):
            a = session_advantages(scores, mask, KEYS, estimator=est, trace_norm=tn)
            b = session_advantages(scores_p, mask_p, keys, estimator=est, trace_norm=tn)
            assert torch.allclose(a, b[:len(KEYS)], atol=1e-6) and not b[len(KEYS):].any(), (est, tn)


# ---- patch targets: fail loudly -----------------------------------------------------------------------------

def test_patch_refuses_a_trainer_module_without_its_targets():
    import types

    from rlreason.verl.hooks import PatchTargetMissing, patch_trainer_module
    mod = types.ModuleType("verl.trainer.ppo.v1.trainer_base")
    with pytest.raises(PatchTargetMissing, match="compute_advantage_for_multi_trajectories"):
        patch_trainer_module(mod)

    def moved(data, keys, estimator):  # a reshaped signature
        return data
    mod.compute_advantage_for_multi_trajectories = moved
    mod.PPOTrainer = type("PPOTrainer", (), {"_compute_metrics": lambda self, batch, metrics, timing_raw,
                                             global_steps, epoch: None})
    mod.tq = None
    with pytest.raises(PatchTargetMissing, match="parameters"):
        patch_trainer_module(mod)


def test_unsupported_verl_version_is_refused():
    from rlreason.verl.hooks import check_verl_version
    check_verl_version("0.9.1")
    with pytest.raises(RuntimeError, match="tested with verl"):
        check_verl_version("0.10.0")
