"""rlreason RunConfig -> the Hydra overrides of `python -m verl.trainer.main_ppo` (verl 0.9.1).

One function, `verl_overrides`, owns the whole mapping (tests/verl/test_config_map.py snapshots it and
composes it against verl's own ppo_trainer.yaml). It does not import verl.

What maps one to one onto verl (native):
    algo.advantage grpo | dr_grpo | rloo | reinforce_pp_baseline | gae
                   -> algorithm.adv_estimator grpo (+ norm_adv_by_std_in_grpo) | grpo with
                      norm_adv_by_std_in_grpo=false | rloo | reinforce_plus_plus_baseline | gae (critic on
                      the same model)
    algo.eps_low/eps_high -> actor.clip_ratio_low/high (clip-higher);  algo.dual_clip_c -> actor.clip_ratio_c
    algo.loss_agg_mode token-mean | seq-mean-token-sum | seq-mean-token-mean -> actor.loss_agg_mode
    algo.kl_coef/kl_estimator -> actor.use_kl_loss + kl_loss_coef/kl_loss_type (k1|k2|k3), or with
                      kl_in_reward -> algorithm.use_kl_in_reward + kl_penalty + kl_ctrl.kl_coef
    algo.entropy_coef -> actor.entropy_coeff;  algo.tis_cap -> algorithm.rollout_correction (token IS)
    algo.dynamic_sampling/max_sampling_rounds -> algorithm.filter_groups (DAPO) + max_num_gen_batches
                      (verl stops with an error when the rounds run out; the local trainer trains on the
                      informative groups it has)
    trainer.* -> batch sizes, lr, warm-up, grad clip, epochs, steps, checkpoints;  rollout.* -> rollout.*
    trainer.micro_batch_size -> *_micro_batch_size_per_gpu: the largest divisor of one GPU's mini-batch rows
                      not above it (micro_batch_per_gpu)
    env row_bound() -> data.max_prompt_length / max_response_length (env_row_bound)
    nodes x gpus_per_node -> trainer.nnodes / n_gpus_per_node

What the adapter adds (env vars read by rlreason.verl.hooks inside every Ray worker; quoted, since Ray
accepts only string values):
    RLREASON_VERL_SESSION_ADV=1      every outcome estimator (not only GRPO, as verl 0.9.1's V1 trainer
                                     does) sees one reward per episode and gives all chunks (rows) of the
                                     episode the same advantage
    RLREASON_VERL_TRACE_NORM=1       loss_agg_mode trace-length-norm (Delethink Eq. 3): verl has no such
                                     mode; it runs as seq-mean-token-sum with each row's advantage scaled
                                     by R / (G l_g) (see hooks.trace_length_weights for when it is exact)
Not expressible in verl: dual_clip_c null (verl always dual-clips; mapped to clip_ratio_c=1e9, which
never binds) and the `reinforce` policy loss (mapped to vanilla PPO with clip ranges of 1e9, i.e. the
unclipped -r A).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rlreason.config import RunConfig
from rlreason.registry import ConfigError
from rlreason.verl.export import agent_name

ADVANTAGES = {"grpo": "grpo", "dr_grpo": "grpo", "rloo": "rloo",
              "reinforce_pp_baseline": "reinforce_plus_plus_baseline", "gae": "gae"}
NATIVE_AGG = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean")
NO_CLIP = 1e9  # a clip bound that never binds: verl has no switch to turn clipping / dual clip off
HOOK = "rlreason.verl.hooks.setup_worker"


def env_row_bound(cfg: RunConfig) -> tuple[int, int]:
    """(max_prompt_length, max_response_length) of one verl row, from the environment's declared RowBound:
    the query gets what rollout.max_model_len leaves beside the response (as the local engine's context
    does), a row's prompt adds the bound's prompt_extra (Delethink's carryover), the response is the
    bound's response. verl pads every row to these widths; the agent loop refuses any row that exceeds
    them instead of truncating it."""
    from rlreason.registry import build_environment
    env = build_environment(cfg.env.name, None, dict(cfg.env.args), cfg.env.markovian)  # as the agent loop
    bound = env.row_bound()
    if bound is None:
        raise ConfigError(f"env.name: '{cfg.env.name}' declares no row bound (Environment.row_bound), so verl's "
                          "max_prompt_length / max_response_length cannot be sized; implement row_bound()")
    query = cfg.rollout.max_model_len - bound.response
    if query < 1:
        raise ConfigError(f"rollout.max_model_len: {cfg.rollout.max_model_len} leaves no room for a prompt beside "
                          f"the environment's {bound.response} response tokens per row")
    return query + bound.prompt_extra, bound.response


def micro_batch_per_gpu(cfg: RunConfig, dp: int) -> int:
    """verl's *_micro_batch_size_per_gpu: the largest divisor of the rows one GPU holds per mini-batch that
    does not exceed trainer.micro_batch_size (the local rows per forward). verl asserts that a GPU's rows
    split evenly into micro-batches; the V1 trainer pads every step to a multiple of the mini-batch rows
    (ppo_mini_batch_size x rollout.n), so divisibility of one GPU's mini-batch share is enough."""
    t = cfg.trainer
    mini_rows = t.prompts_per_step // t.mini_batches * t.samples_per_prompt
    if mini_rows % dp:
        raise ConfigError(
            f"trainer.prompts_per_step / trainer.mini_batches x trainer.samples_per_prompt = {mini_rows} rows per "
            f"mini-batch do not split over {dp} GPUs (verl: actor_rollout_ref.actor.ppo_mini_batch_size x "
            f"rollout.n must be divisible by trainer.nnodes x trainer.n_gpus_per_node)")
    per_gpu = mini_rows // dp
    return max(d for d in range(1, min(per_gpu, t.micro_batch_size) + 1) if per_gpu % d == 0)


def _model_path(name: str, dtype: str) -> str:
    """A known name -> its cache directory (not built here: run `rlreason models prepare NAME` on a node
    with the shared cache first); anything else (hub id, local dir) unchanged."""
    from rlreason.models import MODELS, cache_dir
    return str(cache_dir() / "models" / name / dtype) if name in MODELS else name


def verl_overrides(cfg: RunConfig, *, nodes: int = 1, gpus_per_node: int = 8, run_dir: str | None = None,
                   train_files: str | None = None, val_files: str | None = None,
                   agent_loop_config: str | None = None, rollout_tp: int = 1,
                   rollout_name: str = "vllm") -> list[str]:
    """The complete `main_ppo` override list for `cfg` on a `nodes` x `gpus_per_node` cluster.

    run_dir defaults to cfg.run_dir (pass an absolute one for a cluster: every node must see it);
    train_files/val_files default to `<run_dir>/verl/{train,val}.parquet` (`rlreason data export
    --format verl`), agent_loop_config to `<run_dir>/verl/agent_loops.yaml` (`rlreason verl-config
    --out` writes it). Every config value that verl cannot express raises a ConfigError naming the key."""
    a, t, r = cfg.algo, cfg.trainer, cfg.rollout
    if nodes < 1 or gpus_per_node < 1:
        raise ConfigError(f"cluster: nodes and gpus_per_node must be >= 1, got {nodes} x {gpus_per_node}")
    if a.advantage not in ADVANTAGES:
        raise ConfigError(f"algo.advantage: '{a.advantage}' has no verl counterpart. "
                          f"Allowed: {', '.join(ADVANTAGES)}.")
    if a.loss_agg_mode not in (*NATIVE_AGG, "trace-length-norm"):
        raise ConfigError(f"algo.loss_agg_mode: '{a.loss_agg_mode}' has no verl counterpart. "
                          f"Allowed: {', '.join((*NATIVE_AGG, 'trace-length-norm'))}.")
    if a.policy_loss not in ("ppo_clip", "reinforce"):
        raise ConfigError(f"algo.policy_loss: '{a.policy_loss}' has no verl counterpart. "
                          "Allowed: ppo_clip, reinforce.")
    if t.prompts_per_step % t.mini_batches:
        raise ConfigError(f"trainer.mini_batches: {t.mini_batches} does not divide trainer.prompts_per_step="
                          f"{t.prompts_per_step} (verl splits a step into mini-batches of whole prompts)")
    if cfg.rewards and not isinstance(cfg.rewards, list):
        raise ConfigError("rewards: expected a list of {name, weight, args}")
    run_verl = Path(run_dir or cfg.run_dir) / "verl"
    model_dtype = "bf16" if cfg.model.dtype == "auto" else cfg.model.dtype  # auto: verl's workers are GPUs
    model = _model_path(cfg.model.name, model_dtype)
    prompt_len, response_len = env_row_bound(cfg)
    micro = micro_batch_per_gpu(cfg, nodes * gpus_per_node)
    dtype = {"bf16": "bfloat16", "fp32": "float32"}[model_dtype]
    ppo_clip = a.policy_loss == "ppo_clip"
    AR = "actor_rollout_ref"
    o: list[str] = [
        # --- data: parquet written by `rlreason data export --format verl`
        f"data.train_files={train_files or run_verl / 'train.parquet'}",
        f"data.val_files={val_files or run_verl / 'val.parquet'}",
        f"data.train_batch_size={t.prompts_per_step}",
        f"data.max_prompt_length={prompt_len}",
        f"data.max_response_length={response_len}",
        "data.return_raw_chat=true",
        f"data.seed={cfg.seed}",
        # --- model
        f"{AR}.model.path={model}",
        f"{AR}.model.enable_gradient_checkpointing={str(cfg.model.gradient_checkpointing).lower()}",
        # --- advantage estimator
        f"algorithm.adv_estimator={ADVANTAGES[a.advantage]}",
        f"algorithm.norm_adv_by_std_in_grpo={str(a.advantage == 'grpo').lower()}",
        # --- policy loss: clip-higher, dual clip, aggregation
        f"{AR}.actor.policy_loss.loss_mode=vanilla",
        f"{AR}.actor.clip_ratio={a.eps_low if ppo_clip else NO_CLIP}",
        f"{AR}.actor.clip_ratio_low={a.eps_low if ppo_clip else NO_CLIP}",
        f"{AR}.actor.clip_ratio_high={a.eps_high if ppo_clip else NO_CLIP}",
        f"{AR}.actor.clip_ratio_c={a.dual_clip_c if (ppo_clip and a.dual_clip_c is not None) else NO_CLIP}",
        f"{AR}.actor.loss_agg_mode="
        f"{'seq-mean-token-sum' if a.loss_agg_mode == 'trace-length-norm' else a.loss_agg_mode}",
        f"{AR}.actor.entropy_coeff={a.entropy_coef}",
        f"{AR}.actor.calculate_entropy={str(a.entropy_coef > 0).lower()}",
        # --- KL to the reference policy: as a loss term, or subtracted from the reward
        f"{AR}.actor.use_kl_loss={str(a.kl_coef > 0 and not a.kl_in_reward).lower()}",
        f"{AR}.actor.kl_loss_coef={a.kl_coef}",
        f"{AR}.actor.kl_loss_type={a.kl_estimator}",
        f"algorithm.use_kl_in_reward={str(a.kl_coef > 0 and a.kl_in_reward).lower()}",
        f"algorithm.kl_penalty={a.kl_estimator}",
        "algorithm.kl_ctrl.type=fixed",
        f"algorithm.kl_ctrl.kl_coef={a.kl_coef}",
        # --- engine -> trainer mismatch: truncated importance sampling
        f"algorithm.rollout_correction.rollout_is={'token' if a.tis_cap is not None else 'null'}",
        f"algorithm.rollout_correction.rollout_is_threshold={a.tis_cap if a.tis_cap is not None else 2.0}",
        # --- DAPO dynamic sampling: drop groups whose rewards are all equal
        f"algorithm.filter_groups.enable={str(a.dynamic_sampling).lower()}",
        "algorithm.filter_groups.metric=reward",
        f"algorithm.filter_groups.max_num_gen_batches={a.max_sampling_rounds}",
        # --- optimiser and batches (verl counts mini-batches in prompts, micro-batches in rows per GPU)
        f"{AR}.actor.optim.lr={t.lr}",
        f"{AR}.actor.optim.weight_decay={t.weight_decay}",
        f"{AR}.actor.optim.lr_warmup_steps={t.warmup_steps if t.warmup_steps > 0 else -1}",
        f"{AR}.actor.optim.clip_grad={t.max_grad_norm if t.max_grad_norm is not None else 'inf'}",
        f"{AR}.actor.ppo_epochs={t.ppo_epochs}",
        f"{AR}.actor.ppo_mini_batch_size={t.prompts_per_step // t.mini_batches}",
        f"{AR}.actor.ppo_micro_batch_size_per_gpu={micro}",
        f"{AR}.rollout.log_prob_micro_batch_size_per_gpu={micro}",
        f"{AR}.ref.log_prob_micro_batch_size_per_gpu={micro}",
        # --- rollout: vLLM (or SGLang) behind verl's server manager, G samples per prompt
        f"{AR}.rollout.name={rollout_name}",
        f"{AR}.rollout.n={t.samples_per_prompt}",
        f"{AR}.rollout.temperature={r.temperature}",
        f"{AR}.rollout.top_p={r.top_p}",
        f"{AR}.rollout.dtype={dtype}",
        f"{AR}.rollout.max_model_len={r.max_model_len}",
        f"{AR}.rollout.gpu_memory_utilization={r.gpu_memory_utilization}",
        f"{AR}.rollout.enable_prefix_caching={str(r.enable_prefix_caching).lower()}",
        f"{AR}.rollout.tensor_model_parallel_size={rollout_tp}",
        f"{AR}.rollout.calculate_log_probs=true",
        f"{AR}.rollout.val_kwargs.n={cfg.eval.k}",
        f"{AR}.rollout.val_kwargs.temperature={cfg.eval.temperature}",
        f"{AR}.rollout.val_kwargs.do_sample={str(cfg.eval.temperature > 0).lower()}",
        # --- the rlreason environment as a verl agent loop (one list of AgentLoopOutput per episode)
        f"{AR}.rollout.agent.agent_loop_config_path={agent_loop_config or run_verl / 'agent_loops.yaml'}",
        f"{AR}.rollout.agent.default_agent_loop={agent_name(cfg.env.name)}",
        # --- trainer: V1 (the only one that accepts a list of outputs per episode), cluster shape
        "trainer.use_v1=true",
        f"trainer.nnodes={nodes}",
        f"trainer.n_gpus_per_node={gpus_per_node}",
        f"trainer.total_training_steps={t.steps}",
        f"trainer.project_name={cfg.logging.wandb_project}",
        f"trainer.experiment_name={cfg.name}",
        f"trainer.logger=[{'console,wandb' if cfg.logging.wandb else 'console'}]",
        f"trainer.save_freq={t.checkpoint_every if t.checkpoint_every > 0 else -1}",
        f"trainer.max_actor_ckpt_to_keep={t.keep_checkpoints}",
        f"trainer.test_freq={cfg.eval.every if cfg.eval.every > 0 else -1}",
        f"trainer.val_before_train={str(cfg.eval.every > 0).lower()}",
        f"trainer.default_local_dir={run_verl / 'checkpoints'}",
        f"trainer.rollout_data_dir={run_verl / 'rollouts'}",
        # --- the adapter's additions, applied in every Ray worker by rlreason.verl.hooks. Ray accepts only
        # strings as env var values, so each is quoted: Hydra would parse a bare 1 or 1e-06 as a number.
        f"+ray_kwargs.ray_init.runtime_env.worker_process_setup_hook={HOOK}",
        *(f"+ray_kwargs.ray_init.runtime_env.env_vars.{k}='{v}'" for k, v in runtime_env_vars(cfg).items()),
    ]
    if a.advantage == "gae":  # a learned critic on the same base model; verl's critic defaults otherwise
        o += [f"critic.model.path={model}", f"critic.ppo_micro_batch_size_per_gpu={micro}"]
    return o


def runtime_env_vars(cfg: RunConfig) -> dict[str, str]:
    """The env vars rlreason.verl.hooks reads in every Ray worker (strings, as Ray requires). The user's
    modules (`imports:`, and `--import` merged in by `rlreason verl-config`) travel as RLREASON_IMPORTS, a
    comma-separated list the setup hook imports before any registry lookup; absent when there are none."""
    a = cfg.algo
    env = {"RLREASON_VERL_SESSION_ADV": "1" if a.advantage != "gae" else "0",
           "RLREASON_VERL_TRACE_NORM": "1" if a.loss_agg_mode == "trace-length-norm" else "0",
           "RLREASON_VERL_ADV_EPS": repr(float(a.adv_eps))}
    if cfg.imports:
        env["RLREASON_IMPORTS"] = ",".join(cfg.imports)
    return env


def agent_loop_entries(cfg: RunConfig) -> list[dict[str, Any]]:
    """The agent-loop yaml verl loads (`rollout.agent.agent_loop_config_path`): one entry per environment,
    instantiated by verl with `hydra.utils.instantiate` for every trajectory."""
    entry = {"name": agent_name(cfg.env.name), "_target_": "rlreason.verl.agent_loop.RLReasonAgentLoop",
             "_convert_": "all", "env_name": cfg.env.name, "env_args": dict(cfg.env.args),
             "rewards": list(cfg.rewards)}
    if cfg.env.markovian is not None:  # Delethink around the environment, as the local trainer builds it
        entry["env_markovian"] = dict(cfg.env.markovian)
    return [entry]


def write_agent_loop_yaml(cfg: RunConfig, path: str | Path) -> Path:
    import yaml
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# Written by `rlreason verl-config`; verl loads it via "
                    "actor_rollout_ref.rollout.agent.agent_loop_config_path.\n"
                    + yaml.safe_dump(agent_loop_entries(cfg), sort_keys=False))
    return path
