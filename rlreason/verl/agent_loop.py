"""Any registered rlreason Environment as a verl agent loop (verl 0.9.1, V1 trainer).

verl instantiates `RLReasonAgentLoop` once per trajectory from the agent-loop yaml that
`rlreason verl-config --out` writes (env_name, env_args, rewards), and calls `run()`:

    example  <- the parquet row's extra_info (rlreason.verl.export wrote it)
    episode  <- env.rollout(example, ServerPolicy(verl's server manager))   the unchanged environment
    reward   <- the whole group's Rubric.score_group, via rlreason.verl.reward (group-level, stateful)
    return [AgentLoopOutput per Sample]   Delethink: one per chunk; single-turn / search: one

The V1 trainer keys each output `{uid}_{session}_{index}`, copies the reward to every output of a
session and (for GRPO natively, for every outcome estimator with rlreason.verl.hooks) gives them all
the advantage of the session's final output: one advantage per trace, shared by its chunks.

Episode metrics and reward components travel in `extra_fields["reward_extra_info"]` (verl logs these
for validation and in rollout dumps; rlreason.verl.hooks adds their batch means to the training metrics
as `env/<env>/<metric>` and `reward/<name>`).
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from typing import Any
from uuid import uuid4

from verl.experimental.agent_loop.agent_loop import AgentLoopBase, AgentLoopMetrics, AgentLoopOutput

from rlreason.registry import build_environment
from rlreason.types import Completion, Environment, Episode, Sample
from rlreason.verl.export import example_from_extra_info
from rlreason.verl.reward import get_scorer

log = logging.getLogger(__name__)


class ServerPolicy:
    """rlreason's Policy on top of verl's LLMServerClient: token ids in, token ids + behaviour logprobs out.

    Sampling settings come from verl (`sampling_params`: temperature, top_p, top_k, logprobs), so an
    environment cannot change the behaviour policy; it only chooses max_tokens and stop strings."""

    def __init__(self, server_manager: Any, sampling_params: dict[str, Any], *, tokenizer: Any,
                 eos_ids: set[int]) -> None:
        self.server_manager = server_manager
        self.sampling_params = dict(sampling_params)
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids
        self.calls = 0
        self.seconds = 0.0
        self.num_preempted = 0

    async def generate(self, prompt_ids: list[int], *, max_tokens: int,
                       stop: list[str] | None = None) -> Completion:
        if max_tokens <= 0:
            return Completion([], [], "length", "")
        params = dict(self.sampling_params, max_tokens=int(max_tokens))
        if stop:
            params["stop"] = list(stop)
        t0 = time.monotonic()
        out = await self.server_manager.generate(request_id=uuid4().hex, prompt_ids=list(prompt_ids),
                                                 sampling_params=params)
        self.seconds += time.monotonic() - t0
        self.calls += 1
        self.num_preempted += max(0, out.num_preempted or 0)
        if out.stop_reason == "aborted":
            raise RuntimeError("verl aborted the generation request (weights are being updated?)")
        ids = list(out.token_ids)
        if out.log_probs is None and ids:
            raise RuntimeError("verl returned no logprobs: set actor_rollout_ref.rollout.calculate_log_probs=true")
        lps = [float(x) for x in (out.log_probs or [])]
        # verl reports "completed" for both EOS/stop strings and the length cap; tell them apart here.
        cut = len(ids) >= max_tokens and (not ids or ids[-1] not in self.eos_ids)
        return Completion(ids, lps, "length" if cut else "stop", self.tokenizer.decode(ids))


def eos_ids_of(tokenizer: Any, generation_eos: Any = None) -> set[int]:
    ids = generation_eos if generation_eos is not None else tokenizer.eos_token_id
    ids = set(ids if isinstance(ids, (list, tuple)) else [ids])
    return {int(i) for i in ids if i is not None}


class RowTooLong(ValueError):
    """A row exceeds verl's fixed row widths: training on a truncated context the policy never saw would be
    wrong, so the episode fails instead (`rlreason verl-config` sizes the widths from Environment.row_bound)."""


def episode_to_outputs(episode: Episode, *, reward: float, components: dict[str, float], env_name: str,
                       prompt_length: int, response_length: int, generate_seconds: float = 0.0,
                       num_preempted: int = -1, eos_id: int = 0) -> list[AgentLoopOutput]:
    """One AgentLoopOutput per Sample with a response, in order; the last one is the session's final output
    (verl takes the advantage from it). A prompt over `prompt_length` or a response over `response_length`
    raises RowTooLong (never truncated). Rows with an empty response are dropped, as the local trainer drops
    them (verl's reward placement indexes a row's last response token); if every row is empty, one row with a
    single untrained EOS token (mask 0) carries the session's reward so its group still counts it."""
    if not episode.samples:
        raise ValueError(f"environment '{env_name}' returned an episode without samples")
    for i, s in enumerate(episode.samples):
        if len(s.prompt_ids) > prompt_length or len(s.response_ids) > response_length:
            raise RowTooLong(
                f"environment '{env_name}' row {i}: prompt {len(s.prompt_ids)} / response {len(s.response_ids)} "
                f"tokens exceed data.max_prompt_length={prompt_length} / data.max_response_length="
                f"{response_length}: the environment's row_bound() or rollout.max_model_len is too small for "
                "this example (rlreason verl-config sizes both from them)")
    samples = [s for s in episode.samples if s.response_ids]
    dropped = len(episode.samples) - len(samples)
    if not samples:
        last = episode.samples[-1]
        samples = [Sample(last.prompt_ids, [eos_id], [0.0], [0])]
    info = {**{f"env/{env_name}/{k}": float(v) for k, v in episode.metrics.items()},
            **{f"reward/{k}": float(v) for k, v in components.items()},
            "reward/total": float(reward), "rollout/rows": float(len(samples)),
            "rollout/empty_rows_dropped": float(dropped)}
    outputs = []
    for i, s in enumerate(samples):
        outputs.append(AgentLoopOutput(
            prompt_ids=list(s.prompt_ids), response_ids=list(s.response_ids),
            response_mask=[int(m) for m in s.response_mask],
            response_logprobs=[float(x) for x in s.response_logprobs],
            reward_score=float(reward), num_turns=2,
            metrics=AgentLoopMetrics(generate_sequences=generate_seconds, num_preempted=num_preempted),
            extra_fields={"rlreason_row": i, "rlreason_rows": len(samples),
                          "turn_scores": [], "tool_rewards": []}))
    for o in outputs:  # verl's V1 copies the final output's reward_extra_info to the others anyway
        o.extra_fields["reward_extra_info"] = dict(info)
    outputs[-1].extra_fields["rlreason_final"] = True
    return outputs


_ENVS: dict[tuple, Environment] = {}
_STARTED: dict[str, int] = defaultdict(int)  # uid -> sessions of it started in this worker process
_GEN_EOS: dict[str, Any] = {}  # model path -> generation_config eos ids


def _environment(name: str, args: dict[str, Any], tokenizer: Any,
                 markovian: dict[str, Any] | None = None) -> Environment:
    """One environment object per worker process and config (verl builds an agent loop per trajectory;
    environments may hold clients or curricula that must not be rebuilt every time). `markovian` is the
    config's env.markovian: the same Delethink composition as the local trainer's."""
    key = (name, json.dumps(args, sort_keys=True, default=str), json.dumps(markovian, sort_keys=True),
           id(tokenizer))
    if key not in _ENVS:
        _ENVS[key] = build_environment(name, tokenizer, args, markovian)
    return _ENVS[key]


class RLReasonAgentLoop(AgentLoopBase):
    """verl AgentLoopBase wrapping the rlreason environment `env_name` (built with `env_args`, inside Delethink
    chunking when `env_markovian` is given) and scoring with `rewards` (the config's reward list). Returns a
    list of AgentLoopOutput (V1 trainer)."""

    def __init__(self, trainer_config: Any, server_manager: Any, tokenizer: Any, processor: Any,
                 dataset_cls: Any = None, data_config: Any = None, *, env_name: str,
                 env_args: dict[str, Any] | None = None, env_markovian: dict[str, Any] | None = None,
                 rewards: list[dict[str, Any]] | None = None,
                 group_timeout_s: float = 1800.0, name: str | None = None, **kwargs: Any) -> None:
        super().__init__(trainer_config, server_manager, tokenizer, processor, dataset_cls, data_config, **kwargs)
        self.env_name = env_name
        self.env = _environment(env_name, dict(env_args or {}), tokenizer,
                                None if env_markovian is None else dict(env_markovian))
        self.reward_specs = list(rewards or [])
        self.prompt_length = int(self.rollout_config.prompt_length)
        self.response_length = int(self.rollout_config.response_length)
        self.eos_ids = eos_ids_of(tokenizer, self._generation_eos())
        self.scorer = get_scorer(self.reward_specs)
        if hasattr(self.scorer, "timeout_s"):
            self.scorer.timeout_s = group_timeout_s

    def _generation_eos(self) -> Any:
        path = str(self.config.actor_rollout_ref.model.path)
        if path not in _GEN_EOS:  # read once per process, not once per trajectory
            try:
                from transformers import GenerationConfig
                _GEN_EOS[path] = GenerationConfig.from_pretrained(path).eos_token_id
            except Exception:  # noqa: BLE001 - no generation_config.json: the tokenizer's eos is the stop token
                log.info("no generation config under %s; EOS = the tokenizer's eos token", path)
                _GEN_EOS[path] = None
        return _GEN_EOS[path]

    async def run(self, sampling_params: dict[str, Any], **kwargs: Any) -> list[AgentLoopOutput]:
        uid = str(kwargs.get("uid") or uuid4().hex)
        session_id = int(kwargs.get("session_id", 0))
        # All G sessions of a prompt are started together by one AgentLoopWorker before any generation
        # returns, so this count is the group size when the episode ends (validation may use another n).
        _STARTED[uid] += 1
        extra_info = kwargs.get("extra_info") or {}
        if isinstance(extra_info, str):
            extra_info = json.loads(extra_info)
        example = example_from_extra_info(extra_info, kwargs.get("data_source"))
        policy = ServerPolicy(self.server_manager, sampling_params, tokenizer=self.tokenizer, eos_ids=self.eos_ids)
        try:
            episode = await self.env.rollout(example, policy)
            group_size = _STARTED[uid]
            reward, components = await self.scorer.score(uid, session_id, example, episode, group_size)
        finally:
            _STARTED[uid] -= 1
            if _STARTED[uid] <= 0:
                _STARTED.pop(uid, None)
        return episode_to_outputs(episode, reward=reward, components=components, env_name=self.env_name,
                                  prompt_length=self.prompt_length, response_length=self.response_length,
                                  generate_seconds=policy.seconds, num_preempted=policy.num_preempted,
                                  eos_id=min(self.eos_ids) if self.eos_ids else 0)
