"""What the adapter adds inside verl's trainer, installed in every Ray worker process by
`runtime_env.worker_process_setup_hook=rlreason.verl.hooks.setup_worker` (rlreason verl-config sets it).
It first imports the user's modules listed in RLREASON_IMPORTS (the config's `imports:` and `--import`), so
their registered environments and rewards are found by the agent loop and the reward in every worker.

verl 0.9.1's V1 trainer, given several AgentLoopOutputs per session (Delethink chunks), computes the
GRPO advantage from each session's final output and broadcasts it to the session's other outputs. For
every other estimator it treats each output as its own group member, so a 5-chunk trace would count as
5 answers in its RLOO / REINFORCE++ group. The hook replaces that function (when the trainer module is
imported, nothing else is touched) with `session_advantages`:

    reward of a session = its final output's score (+ the KL-in-reward penalty of all its rows)
    advantages          = rlreason.algos.ADVANTAGES[grpo|dr_grpo|rloo|reinforce_pp_baseline] over sessions,
                          grouped by uid, exactly as the local trainer calls them (REINFORCE++'s batch
                          whitening counts each episode once; sessions with no response token, i.e.
                          verl's padding rows, take no part)
    every row (chunk) of a session gets the session's advantage

and, with RLREASON_VERL_TRACE_NORM=1, trace-length normalisation (Delethink Eq. 3,
J = (1/G) sum_g (1/l_g) sum_chunks sum_t U): verl has no such aggregation, and its policy loss sees no
trace ids, so the weight rides on the advantage. The PPO loss is positively homogeneous in A
(-min(r wA, clip(r) wA) = -w min(r A, clip(r) A) for w > 0, dual clip included), so scaling row i's
advantage by w_i = (R/G) / l_g(i) and aggregating with seq-mean-token-sum (sum over tokens, mean over
R rows) gives (1/G) sum_g (1/l_g) sum U. verl cuts a step into ceil(R/M) optimizer steps of M rows
(ppo_mini_batch_size x n) and divides each by M, so the steps' gradients sum to R/M times that objective
(docs/verl.md, "Optimizer steps for chunked traces"; measured by tests/verl/test_rehearsal.py).
Entropy and KL loss terms are not reweighted. GAE is left to verl (per-row critic).

Every patch target is checked before patching (present, expected parameters) and a verl outside
rlreason.verl.SUPPORTED_VERL is refused: a moved internal fails at worker start instead of silently
training verl's defaults.

The hook also adds the batch means of the episode metrics and reward components the agent loop put in
`extra_fields["reward_extra_info"]` (final output of each session; verl's padding rows skipped) to the
training metrics.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import inspect
import logging
import os
import sys
from collections import defaultdict
from typing import Any

import numpy as np
import torch

from rlreason.verl import SUPPORTED_VERL, version_supported

log = logging.getLogger(__name__)

TRAINER_MODULE = "verl.trainer.ppo.v1.trainer_base"
# verl (adv_estimator, norm_adv_by_std_in_grpo) -> rlreason estimator; others (gae, ...) stay verl's.
ESTIMATORS = {("grpo", True): "grpo", ("grpo", False): "dr_grpo", ("rloo", None): "rloo",
              ("reinforce_plus_plus_baseline", None): "reinforce_pp_baseline"}


def rlreason_estimator(adv_estimator: Any, norm_adv_by_std_in_grpo: bool) -> str | None:
    name = getattr(adv_estimator, "value", adv_estimator)
    return ESTIMATORS.get((name, bool(norm_adv_by_std_in_grpo)), ESTIMATORS.get((name, None)))


def parse_keys(batch_keys: list[str]) -> tuple[list[int], list[str], list[bool]]:
    """verl V1 row keys `{uid}_{session}_{index}` -> (row -> session number, session uids, row is final)."""
    sessions: dict[str, int] = {}
    uids: list[str] = []
    last: dict[int, tuple[int, int]] = {}
    row_session = []
    for r, key in enumerate(batch_keys):
        uid, session, index = key.rsplit("_", 2)
        s = sessions.setdefault(f"{uid}_{session}", len(sessions))
        if s == len(uids):
            uids.append(uid)
        row_session.append(s)
        if s not in last or last[s][0] < int(index):
            last[s] = (int(index), r)
    final_rows = {r for _, r in last.values()}
    return row_session, uids, [r in final_rows for r in range(len(batch_keys))]


def trace_length_weights(row_session: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """w [R] = (R / G) / l_g: with seq-mean-token-sum this turns the loss into Delethink's
    (1/G) sum_g (1/l_g) sum U. row_session [R] long, response_mask [R,T]. Delethink Eq. 3, arXiv 2510.06557."""
    mask = response_mask.to(torch.float64)
    G = int(row_session.max()) + 1
    l = torch.zeros(G, dtype=torch.float64).index_add_(0, row_session, mask.sum(-1))
    R = int((mask.sum(-1) > 0).sum())
    G_valid = int((l > 0).sum())
    return (R / max(G_valid, 1)) / l[row_session].clamp_min(1)


def session_advantages(row_rewards: torch.Tensor, response_mask: torch.Tensor, batch_keys: list[str], *,
                       estimator: str, eps: float = 1e-6, trace_norm: bool = False) -> torch.Tensor:
    """Per-token advantages [R,T]: one advantage per session (episode) from rlreason's estimator, grouped by
    uid, broadcast to all rows of the session. row_rewards [R]: each row's session reward (only the final
    row's value is read). Shapes: R rows, T tokens, S sessions."""
    from rlreason.algos.advantages import ADVANTAGES
    row_session, uids, is_final = parse_keys(batch_keys)
    rs = torch.tensor(row_session, dtype=torch.long)
    S = len(uids)
    rewards = torch.zeros(S, dtype=torch.float64)
    for r, s in enumerate(row_session):
        if is_final[r]:
            rewards[s] = float(row_rewards[r])
    _, group_ids = np.unique(np.array(uids, dtype=object).astype(str), return_inverse=True)
    # Sessions without a response token are verl's batch padding (or carry no trainable row): they join no
    # group statistic, as in the local trainer, which never sees them.
    tokens = torch.zeros(S, dtype=torch.float64).index_add_(0, rs, response_mask.to(torch.float64).sum(-1))
    real = tokens > 0
    adv = torch.zeros(S, dtype=torch.float64)
    if bool(real.any()):
        # No token_counts: every episode counts once in REINFORCE++'s batch whitening, as in the local trainer.
        adv[real] = ADVANTAGES.get(estimator, "algo.advantage")(
            rewards[real], torch.as_tensor(group_ids, dtype=torch.long)[real], eps=eps).to(torch.float64)
    row_adv = adv[rs]
    if trace_norm:
        row_adv = row_adv * trace_length_weights(rs, response_mask)
    return (row_adv.unsqueeze(-1) * response_mask.to(torch.float64)).to(torch.float32)


def _flag(name: str) -> bool:
    return os.environ.get(name, "0") not in ("", "0", "false", "False")


def make_advantage_fn(original: Any) -> Any:
    """A drop-in for verl's V1 `compute_advantage_for_multi_trajectories` (same signature)."""

    def compute_advantage_for_multi_trajectories(data, batch_keys, adv_estimator, gamma=1.0, lam=1.0,
                                                 num_repeat=1, norm_adv_by_std_in_grpo=True, config=None):
        trace_norm = _flag("RLREASON_VERL_TRACE_NORM")
        name = rlreason_estimator(adv_estimator, norm_adv_by_std_in_grpo)
        if name is None or not _flag("RLREASON_VERL_SESSION_ADV"):
            data = original(data, batch_keys, adv_estimator, gamma=gamma, lam=lam, num_repeat=num_repeat,
                            norm_adv_by_std_in_grpo=norm_adv_by_std_in_grpo, config=config)
            if trace_norm:
                rs = torch.tensor(parse_keys(batch_keys)[0], dtype=torch.long)
                w = trace_length_weights(rs, data.batch["response_mask"]).to(data.batch["advantages"].dtype)
                data.batch["advantages"] = data.batch["advantages"] * w.unsqueeze(-1)
            return data
        b = data.batch
        scores = b["token_level_scores"].sum(-1)
        kl_part = (b["token_level_rewards"] - b["token_level_scores"]).sum(-1)  # 0 without KL in reward
        row_session = torch.tensor(parse_keys(batch_keys)[0], dtype=torch.long)
        kl_session = torch.zeros(int(row_session.max()) + 1, dtype=kl_part.dtype).index_add_(0, row_session, kl_part)
        row_rewards = scores + kl_session[row_session]
        adv = session_advantages(row_rewards, b["response_mask"], list(batch_keys), estimator=name,
                                 eps=float(os.environ.get("RLREASON_VERL_ADV_EPS", "1e-6")), trace_norm=trace_norm)
        b["advantages"] = adv.to(b["token_level_rewards"].dtype)
        b["returns"] = b["advantages"]
        return data

    compute_advantage_for_multi_trajectories.rlreason_patched = True
    return compute_advantage_for_multi_trajectories


def env_metrics(extra_fields: list[Any]) -> dict[str, float]:
    """Batch means of the numeric `reward_extra_info` entries of each session's final output."""
    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    for ef in extra_fields:
        if not isinstance(ef, dict) or not ef.get("rlreason_final"):
            continue
        for k, v in (ef.get("reward_extra_info") or {}).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                sums[k] += float(v)
                counts[k] += 1
    return {k: sums[k] / counts[k] for k in sums}


def make_metrics_method(original: Any, tq: Any) -> Any:
    def _compute_metrics(self, batch, metrics, timing_raw, global_steps, epoch):
        out = original(self, batch, metrics, timing_raw, global_steps, epoch)
        # verl's padding rows copy row 0's extra fields (its final-row flag too): read real rows only.
        keys = [k for k, tag in zip(batch.keys, batch.tags) if not (tag or {}).get("is_padding", False)]
        if keys:
            data = tq.kv_batch_get(keys=keys, partition_id=batch.partition_id, select_fields=["extra_fields"])
            metrics.update(env_metrics(data.pop("extra_fields").tolist()))
        return out
    return _compute_metrics


# The patch targets and the parameters the replacements assume; a verl release that moves or reshapes
# them must fail at worker start, not train something else.
TARGETS = {"compute_advantage_for_multi_trajectories": ["data", "batch_keys", "adv_estimator", "gamma", "lam",
                                                        "num_repeat", "norm_adv_by_std_in_grpo", "config"],
           "PPOTrainer._compute_metrics": ["self", "batch", "metrics", "timing_raw", "global_steps", "epoch"]}


class PatchTargetMissing(RuntimeError):
    """verl's trainer no longer has a function the adapter replaces, or its signature changed."""


def _check_target(mod: Any, dotted: str) -> Any:
    obj = mod
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise PatchTargetMissing(f"rlreason.verl.hooks: {mod.__name__}.{dotted} is missing in verl "
                                     f"{_verl_version()} (adapter tested with {SUPPORTED_VERL})")
    params = list(inspect.signature(obj).parameters)
    if not getattr(obj, "rlreason_patched", False) and params != TARGETS[dotted]:
        raise PatchTargetMissing(f"rlreason.verl.hooks: {mod.__name__}.{dotted} has parameters {params}, the "
                                 f"adapter expects {TARGETS[dotted]} (verl {_verl_version()}; tested {SUPPORTED_VERL})")
    return obj


def _verl_version() -> str:
    import verl
    return str(getattr(verl, "__version__", "unknown"))


def check_verl_version(version: str | None = None) -> None:
    """Refuse a verl outside the tested range: the patched internals are not a public API."""
    version = version or _verl_version()
    if not version_supported(version):
        raise RuntimeError(f"verl {version} is installed; rlreason's verl adapter is tested with verl {SUPPORTED_VERL} "
                           f"only (its hooks patch verl internals): pip install 'verl[vllm]=={SUPPORTED_VERL[0]}'")


def patch_trainer_module(mod: Any) -> None:
    """Apply the adapter's changes to verl's V1 trainer module (idempotent). Every target is checked first;
    a missing or reshaped one raises PatchTargetMissing (trace norm and per-session advantages would
    otherwise silently become verl's defaults)."""
    fn = _check_target(mod, "compute_advantage_for_multi_trajectories")
    method = _check_target(mod, "PPOTrainer._compute_metrics")
    if not getattr(fn, "rlreason_patched", False):
        mod.compute_advantage_for_multi_trajectories = make_advantage_fn(fn)
    if not getattr(method, "rlreason_patched", False):
        patched = make_metrics_method(method, mod.tq)
        patched.rlreason_patched = True
        mod.PPOTrainer._compute_metrics = patched
    log.info("rlreason: patched %s (per-session advantages, trace norm=%s, env metrics)",
             mod.__name__, _flag("RLREASON_VERL_TRACE_NORM"))


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Patches TRAINER_MODULE right after it is imported, so worker processes that never import it
    (vLLM servers, FSDP workers) pay nothing."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != TRAINER_MODULE:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        exec_module = loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            patch_trainer_module(module)
        loader.exec_module = exec_and_patch  # type: ignore[method-assign]
        return spec


IMPORTS_VAR = "RLREASON_IMPORTS"


def import_user_modules() -> list[str]:
    """Import the modules named in RLREASON_IMPORTS (comma-separated; `rlreason verl-config` sets it from
    `imports:` and `--import`), so the environments and rewards they register exist in this worker before
    the agent loop or reward looks them up, as the local trainer imports them before its lookups. Returns
    the module names; a module that does not import raises a ConfigError naming it."""
    from rlreason.registry import import_modules
    modules = [m.strip() for m in os.environ.get(IMPORTS_VAR, "").split(",") if m.strip()]
    import_modules(modules, IMPORTS_VAR)
    return modules


def setup_worker() -> None:
    """Ray `worker_process_setup_hook`: check verl's version, import the user's modules, then patch verl's
    V1 trainer now or when it is imported (the patch itself checks every target and raises if one moved)."""
    check_verl_version()
    import_user_modules()
    if TRAINER_MODULE in sys.modules:
        patch_trainer_module(sys.modules[TRAINER_MODULE])
    elif not any(isinstance(f, _PatchOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _PatchOnImport())
