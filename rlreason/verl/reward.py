"""Reward bridge: rlreason's Rubric scores verl rollouts, group-level and stateful rewards included.

verl 0.9.1 scores each trajectory on its own as soon as it finishes (its reward loop workers see one
response at a time), which cannot express MASH's n_min (the fewest searches any correct rollout of
the question needed) or GRPO-style group terms. So the adapter scores inside the agent loop:

    the G sessions of one prompt (same `uid`) run as G coroutines in one AgentLoopWorker
    each finished episode is handed to a GroupScorer under its uid
    when the G-th arrives, Rubric.score_group(examples, episodes) runs once for the whole group,
    and every session gets its reward back (AgentLoopOutput.reward_score), so verl's reward loop is skipped

Stateful rewards (search_cost's n_min table) must see every group of the run, but verl runs several
AgentLoopWorker processes. Under Ray the scorer therefore lives in ONE named actor ("the driver" of
reward state, `rlreason-rubric`), shared by all workers; `state_dict()` on that actor is the state to
checkpoint. Without Ray (tests, the local path) a process-local GroupScorer does the same job.

A session that never arrives (its episode raised) would block the others: after `timeout_s` the
partial group is scored as it is and the shortfall is logged.

`compute_score` at the bottom is verl's per-sample `custom_reward_function` interface, for runs that use
verl's own agent loops with rlreason reward functions; it refuses group-level rewards, which need the
agent-loop path.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from rlreason.rubric import Rubric
from rlreason.types import Episode

log = logging.getLogger(__name__)

ACTOR_NAME = "rlreason-rubric"
ACTOR_NAMESPACE = "rlreason"


class GroupScorer:
    """Collects the episodes of each group (by uid) and scores a complete group with the Rubric."""

    def __init__(self, reward_specs: list[dict[str, Any]], timeout_s: float = 1800.0) -> None:
        self.rubric = Rubric(reward_specs)
        self.timeout_s = timeout_s
        self._groups: dict[str, dict[int, tuple[dict, Episode]]] = {}
        self._done: dict[str, asyncio.Future] = {}
        self.groups_scored = 0
        self.partial_groups = 0

    async def score(self, uid: str, session_id: int, example: dict, episode: Episode,
                    group_size: int) -> tuple[float, dict[str, float]]:
        """(reward, components) of this session's episode, once its whole group has been scored."""
        loop = asyncio.get_running_loop()
        fut = self._done.setdefault(uid, loop.create_future())
        group = self._groups.setdefault(uid, {})
        group[int(session_id)] = (example, episode)
        if len(group) >= group_size:
            self._score(uid)
        else:
            try:
                await asyncio.wait_for(asyncio.shield(fut), timeout=self.timeout_s)
            except asyncio.TimeoutError:
                if not fut.done():
                    log.warning("group %s: %d of %d sessions arrived within %.0f s; scoring the partial group",
                                uid, len(group), group_size, self.timeout_s)
                    self.partial_groups += 1
                    self._score(uid)
        results = fut.result()
        return results[int(session_id)]

    def _score(self, uid: str) -> None:
        group = self._groups.pop(uid)
        sessions = sorted(group)
        examples = [group[s][0] for s in sessions]
        episodes = [group[s][1] for s in sessions]
        self.rubric.score_group(examples, episodes)
        self.groups_scored += 1
        fut = self._done.pop(uid)
        fut.set_result({s: (ep.reward, dict(ep.reward_components)) for s, ep in zip(sessions, episodes)})

    def stats(self) -> dict[str, float]:
        out = {"reward/groups_scored": float(self.groups_scored), "reward/partial_groups": float(self.partial_groups)}
        out.update({f"reward/{n}/errors": float(e) for n, e in self.rubric.errors.items()})
        return out

    def state_dict(self) -> dict[str, Any]:
        return self.rubric.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rubric.load_state_dict(state)


_local: dict[str, GroupScorer] = {}


def get_scorer(reward_specs: list[dict[str, Any]], *, use_ray: bool | None = None) -> Any:
    """The scorer the agent loops of this run share: the named Ray actor when Ray is up (one reward state
    for every worker process), else a process-local GroupScorer. Returns an object with an async
    `score(uid, session_id, example, episode, group_size)`."""
    import json
    key = json.dumps(reward_specs, sort_keys=True, default=str)
    if use_ray is None:
        try:
            import ray
            use_ray = ray.is_initialized()
        except ImportError:
            use_ray = False
    if not use_ray:
        if key not in _local:
            _local[key] = GroupScorer(reward_specs)
        return _local[key]
    return _RayScorer(reward_specs, key)


class _RayScorer:
    """Client side of the shared reward actor; the actor is created on first use (get_if_exists)."""

    def __init__(self, reward_specs: list[dict[str, Any]], key: str) -> None:
        import hashlib

        import ray
        # One actor per job and reward list: two runs on one cluster never share reward state.
        name = f"{ACTOR_NAME}-{ray.get_runtime_context().get_job_id()}-{hashlib.sha1(key.encode()).hexdigest()[:8]}"
        actor_cls = ray.remote(num_cpus=0)(GroupScorer)
        self.actor = actor_cls.options(name=name, namespace=ACTOR_NAMESPACE, get_if_exists=True,
                                       max_concurrency=10_000).remote(reward_specs)

    async def score(self, uid: str, session_id: int, example: dict, episode: Episode,
                    group_size: int) -> tuple[float, dict[str, float]]:
        return await self.actor.score.remote(uid, session_id, example, episode, group_size)


# ---- verl's per-sample custom_reward_function interface ------------------------------------------------

def compute_score(data_source: str, solution_str: str, ground_truth: str, extra_info: dict | None = None,
                  **kwargs: Any) -> dict[str, float]:
    """verl `custom_reward_function` (reward.custom_reward_function.path=<this file>, name=compute_score):
    scores one response with the rlreason rewards listed in `extra_info["rlreason_rewards"]` (or
    RLREASON_VERL_REWARDS, a JSON list of {name, weight, args}). Returns {"score": total, <components>}.
    Group-level rewards raise: they need the whole group, i.e. the rlreason agent loop."""
    import json
    import os

    from rlreason.verl.export import example_from_extra_info
    extra_info = dict(extra_info or {})
    specs = extra_info.get("rlreason_rewards") or json.loads(os.environ.get("RLREASON_VERL_REWARDS", "[]"))
    if not specs:
        raise ValueError("compute_score: no rlreason rewards given (extra_info.rlreason_rewards or "
                         "RLREASON_VERL_REWARDS)")
    scorer = get_scorer(specs, use_ray=False)
    for name, reward, _ in scorer.rubric.terms:
        if getattr(reward, "group_level", False) or type(reward).__name__ != "FunctionReward":
            raise ValueError(f"reward '{name}' is group-level or stateful; verl's per-sample compute_score "
                             "cannot give it the whole group. Use the rlreason agent loop "
                             "(rlreason verl-config sets it up).")
    example = example_from_extra_info(extra_info, data_source)
    example["answer"] = ground_truth if ground_truth is not None else example.get("answer")
    ep = Episode(samples=[], transcript=solution_str)
    t0 = time.monotonic()
    scorer.rubric.score_group([example], [ep])
    return {"score": ep.reward, **ep.reward_components, "reward_seconds": time.monotonic() - t0}
