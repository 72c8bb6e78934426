"""Auto-CEI's environment (arXiv 2410.07627): single-turn reasoning where "I don't know" is an allowed
answer, and the curriculum that decides how much trying a refusal must show.

Episode: the prompt teaches `\\boxed{I don't know}`; the response is judged once (`rlreason.rewards.idk.judge`)
into `episode.metrics` (correct, refused, answered, steps, and the sums the curriculum's means need), and
the c1, c2 in force are stamped into `episode.info`; the `idk` reward turns those into R (one source of
truth: the curriculum state lives here only).

Curriculum, advanced by `on_step_end(stats)` with the batch means `env/curriculum_ei/<metric>` (the GRPO
trainer calls it after every step, the expert-iteration trainer after its initial measurement and after
every round):

    first call        initialise from the initial model's refusals, d_i = steps before refusal i:
                        step = min(0.2 std(d), 0.5),  c1 = mean(d) + step,  c2 = -ln(0.1) / (4 std(d))
                      with the sample std (ddof = 1) of the k refusals; k comes from the episode count the
                      trainer passes as `rollout/episodes`. An initial model that never refuses: mean and
                      std of the steps of all its responses (a refusal then has to show the effort a typical
                      answer shows). c1 / c2 / step given in env.args are kept as given.
                      `min_std` (off by default; the paper has no floor) floors std. Without it, one refusal
                      or all at the same d leave std undefined or 0 and c2 infinite: the run stops with an
                      error naming env.args.min_std (or give env.args.c2 and env.args.step).
    every later call  one round of the current stage. The stage ends when precision and refusal rate
                      moved less than `stop_threshold` since the stage's previous round, or after
                      `max_rounds_per_stage` rounds (so a stage trains at least 2 rounds unless that is 1):
                        f = (1 - lam) precision + lam (1 - refusal rate)
                        c1' = c1 + step if f > f of the previous stage (the initial model's for stage 1)
                              else c1 - step
                        c1' was already tried and scored lower than f -> done, c1 stays
                        otherwise c1 <- c1'
precision = correct / answered (0 when nothing was answered), refusal rate = refusals / all.
After `done` the curriculum no longer moves (the expert-iteration trainer stops).

`freeze_c1` (off by default) keeps c1 at its initial value: stages still end and are recorded (f, history),
but c1 never moves and the run never stops early. That is Auto-CEI without its curriculum, the ablation
that shows what the hill climbing adds.

`split_by` (off by default) names a key of the problems' `info` (e.g. `difficulty` of the cei_mixture
source) whose values group the episodes: every statistic above is then also reported per group, as
`<value>/accuracy`, `<value>/precision`, ... (from per-episode metrics `<value>/correct`, `<value>/refused`,
`<value>/refusal_steps`, which the trainers average over the episodes that have them, i.e. over the group).
The curriculum itself climbs on the whole batch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from rlreason.environments.single_turn import SingleTurn
from rlreason.registry import ConfigError, register_environment
from rlreason.rewards.idk import DEFAULT_PHRASES, STEP_COUNTERS, VERIFIERS, judge, phrase_pattern
from rlreason.types import CurriculumEnvironment, Episode, Policy

IDK_TEMPLATE = ("{question}\nReason step by step, one step per line, and put the final answer in \\boxed{{}}. "
                "If you cannot solve it, answer \\boxed{{I don't know}}.")


def outcome_stats(means: dict[str, float], lam: float) -> dict[str, float]:
    """Batch means of the episode metrics -> the quantities Auto-CEI reports and climbs on."""
    acc, ref = means["correct"], means["refused"]
    answered = 1.0 - ref
    precision = acc / answered if answered > 0 else 0.0
    return {"accuracy": acc, "precision": precision, "refusal_rate": ref,
            "f": (1.0 - lam) * precision + lam * (1.0 - ref),
            "steps_before_refusal": means["refusal_steps"] / ref if ref > 0 else math.nan}


def mean_sample_std(s: float, s2: float, share: float, episodes: float) -> tuple[float, float]:
    """Mean and sample std (ddof = 1) of x over the k = share * episodes episodes that have it, from
    the batch means s = sum(x) / episodes and s2 = sum(x^2) / episodes:
        mean = s / share,  var = k / (k - 1) * (s2 / share - mean^2)
    std is NaN for k < 2 (undefined)."""
    mean = s / share
    k = round(share * episodes)
    if k < 2:
        return mean, math.nan
    return mean, math.sqrt(max(s2 / share - mean * mean, 0.0) * k / (k - 1))


@dataclass
class Curriculum:
    """Hill climbing on c1 (see the module doc). Settings first, then the state `state_dict` saves."""

    lam: float = 0.2
    stop_threshold: float = 0.003
    max_rounds_per_stage: int = 3
    min_std: float | None = None  # a floor on the initial std; None = the paper's formula, no floor
    freeze_c1: bool = False  # c1 stays at its initial value (no curriculum; the ablation)
    c1: float | None = None
    c2: float | None = None
    step: float | None = None
    started: bool = False
    stage: int = 0
    rounds: int = 0  # rounds run in the current stage
    last: list[float] | None = None  # [precision, refusal rate] of the stage's previous round
    f_prev: float | None = None  # f at the end of the previous stage (initially: the initial model's)
    tried: dict[str, float] = field(default_factory=dict)  # c1 (6 decimals) -> f at the end of its stage
    history: list[dict[str, Any]] = field(default_factory=list)  # one row at the start and per stage end
    done: bool = False

    SETTINGS = ("lam", "stop_threshold", "max_rounds_per_stage", "min_std", "freeze_c1")

    def initialise(self, means: dict[str, float], out: dict[str, float], episodes: float | None) -> None:
        """c1, c2, step from the initial model's refusals (Auto-CEI, arXiv 2410.07627, Sec. 3.2):
        step = min(0.2 std, 0.5), c1 = mean + step, c2 = -ln(0.1) / (4 std); `episodes` is the batch size
        the means are over (the sample std needs the count of refusals)."""
        ref = means["refused"]
        if ref > 0:
            s, s2, share = means["refusal_steps"], means["refusal_steps_sq"], ref
            what = "refusal(s) of the initial model"
        else:  # the initial model never refuses: use the effort of all its responses
            s, s2, share = means["steps"], means["steps_sq"], 1.0
            what = "response(s) of an initial model that never refuses"
        mean, std = s / share, math.nan
        if self.step is None or self.c2 is None:
            if episodes is None:
                raise ValueError("the curriculum's first update needs the episode count (the trainer's "
                                 "'rollout/episodes' stat) for the sample std of the refusals' steps")
            mean, std = mean_sample_std(s, s2, share, episodes)
            if self.min_std is not None:
                std = self.min_std if math.isnan(std) else max(std, self.min_std)
            if not std > 0:
                k = round(share * episodes)
                spread = "one value" if k < 2 else f"all after {mean:g} steps"
                raise ConfigError(
                    f"env.args.min_std: the steps of the {k} {what} have no spread ({spread}), so c2 = -ln(0.1) "
                    f"/ (4 std) is undefined; set env.args.min_std (a floor on std, e.g. 1.0) or give env.args.c2 "
                    f"and env.args.step.")
        if self.step is None:
            self.step = min(0.2 * std, 0.5)
        if self.c1 is None:
            self.c1 = mean + self.step
        if self.c2 is None:
            self.c2 = -math.log(0.1) / (4.0 * std)
        self.started, self.f_prev = True, out["f"]
        self._record("init", out)

    def update(self, means: dict[str, float], out: dict[str, float], episodes: float | None = None) -> str:
        """Advance by one round's stats; returns what happened (init, round, stage_end, done).
        `episodes` (the number of episodes the means are over) is needed by the first call only."""
        if not self.started:
            self.initialise(means, out, episodes)
            return "init"
        if self.done:
            return "done"
        self.rounds += 1
        p, r = out["precision"], out["refusal_rate"]
        settled = self.last is not None and abs(p - self.last[0]) < self.stop_threshold \
            and abs(r - self.last[1]) < self.stop_threshold
        self.last = [p, r]
        if not settled and self.rounds < self.max_rounds_per_stage:
            return "round"
        f = out["f"]
        self.tried[_key(self.c1)] = f
        if self.freeze_c1:
            self.f_prev, self.stage, self.rounds, self.last = f, self.stage + 1, 0, None
            self._record("stage_end", out)
            return "stage_end"
        nxt = self.c1 + self.step if f > self.f_prev else self.c1 - self.step
        self.f_prev, self.stage, self.rounds, self.last = f, self.stage + 1, 0, None
        if self.tried.get(_key(nxt), math.inf) < f:
            self.done = True
        else:
            self.c1 = nxt
        self._record("done" if self.done else "stage_end", out)
        return "done" if self.done else "stage_end"

    def _record(self, event: str, out: dict[str, float]) -> None:
        self.history.append({"event": event, "stage": self.stage, "c1": self.c1, "c2": self.c2,
                             **{k: out[k] for k in ("precision", "refusal_rate", "f")}})

    def state_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k not in self.SETTINGS}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        names = {f.name for f in fields(self)} - set(self.SETTINGS)
        if set(state) != names:
            raise ValueError(f"curriculum state has keys {sorted(state)}, expected {sorted(names)}")
        for k, v in state.items():
            setattr(self, k, v)


def _key(c1: float) -> str:
    return f"{c1:.6f}"


@register_environment("curriculum_ei")
class CurriculumEI(SingleTurn, CurriculumEnvironment):
    """SingleTurn whose answers may be "I don't know", judged for the `idk` reward; owns the curriculum.

    `steps`: step counter (lines | sentences); `refusal_phrases`: what counts as a refusal; `verifier`:
    math | reasoning_gym; `c1`, `c2`, `step`: null = from the initial model; `lam`, `stop_threshold`,
    `max_rounds_per_stage`: the curriculum; `min_std`: an optional floor on the initial std; `freeze_c1`:
    no curriculum; `split_by`: an info key whose values the statistics are also reported per (module doc)."""

    def __init__(self, tokenizer, *, template: str = IDK_TEMPLATE, style: str = "chat",
                 system_prompt: str | None = None, max_tokens: int = 512, stop: list[str] | None = None,
                 transcript_prefix: str = "", steps: str = "lines",
                 refusal_phrases: list[str] | None = None, verifier: str = "math", c1: float | None = None,
                 c2: float | None = None, step: float | None = None, lam: float = 0.2,
                 stop_threshold: float = 0.003, max_rounds_per_stage: int = 3,
                 min_std: float | None = None, freeze_c1: bool = False, split_by: str | None = None) -> None:
        super().__init__(tokenizer, template=template, style=style, system_prompt=system_prompt,
                         max_tokens=max_tokens, stop=stop, transcript_prefix=transcript_prefix)
        STEP_COUNTERS.get(steps, "env.args.steps")
        if verifier not in VERIFIERS:
            raise ConfigError(f"env.args.verifier: '{verifier}' is not allowed. Allowed: {', '.join(VERIFIERS)}.")
        if not 0.0 <= lam <= 1.0:
            raise ConfigError(f"env.args.lam: must be in [0, 1], got {lam}.")
        if max_rounds_per_stage < 1:
            raise ConfigError(f"env.args.max_rounds_per_stage: must be >= 1, got {max_rounds_per_stage}.")
        if min_std is not None and not min_std > 0:
            raise ConfigError(f"env.args.min_std: must be > 0 or null (no floor), got {min_std}.")
        if not isinstance(freeze_c1, bool):
            raise ConfigError(f"env.args.freeze_c1: must be true or false, got {freeze_c1!r}.")
        if split_by is not None and (not isinstance(split_by, str) or not split_by):
            raise ConfigError(f"env.args.split_by: must be an info key (e.g. difficulty) or null, got {split_by!r}.")
        self.steps, self.verifier, self.split_by = steps, verifier, split_by
        self.phrases = tuple(refusal_phrases) if refusal_phrases is not None else DEFAULT_PHRASES
        phrase_pattern(self.phrases)  # an empty list fails here, before the run
        self.curriculum = Curriculum(lam=lam, stop_threshold=stop_threshold, max_rounds_per_stage=max_rounds_per_stage,
                                     min_std=min_std, freeze_c1=freeze_c1, c1=c1, c2=c2, step=step)

    def judge(self, completion: str, example: dict) -> Any:
        """The verdict on one response (a subclass may judge differently; tests script it)."""
        return judge(completion, example, steps=self.steps, phrases=self.phrases, verifier=self.verifier)

    async def rollout(self, example: dict, policy: Policy) -> Episode:
        ep = await super().rollout(example, policy)
        j = self.judge(ep.transcript, example)
        ep.metrics.update(j.metrics())
        if self.split_by is not None:
            group = (example.get("info") or {}).get(self.split_by)
            if group is None:
                raise ValueError(f"env.args.split_by: problem {example.get('id')!r} has no info.{self.split_by}")
            m = j.metrics()
            ep.metrics.update({f"{group}/{k}": m[k] for k in ("correct", "refused", "refusal_steps")})
        ep.info.update(c1=self.curriculum.c1, c2=self.curriculum.c2, judgement=j.reason)
        return ep

    def summarize(self, means: dict[str, float]) -> dict[str, float]:
        """accuracy, precision, refusal_rate, f, steps_before_refusal of a batch's metric means, and the
        same per group `<value>/...` when `split_by` is set."""
        out = outcome_stats(means, self.curriculum.lam)
        groups = sorted({k.rsplit("/", 1)[0] for k in means if k.endswith("/refused")})
        for g in groups:
            sub = {k: means[f"{g}/{k}"] for k in ("correct", "refused", "refusal_steps")}
            out.update({f"{g}/{k}": v for k, v in outcome_stats(sub, self.curriculum.lam).items()})
        return out

    def on_step_end(self, stats: dict[str, float]) -> None:
        """Advance the curriculum by one step/round and add its quantities to `stats` under the same
        prefix (the trainers log that dict): the outcome stats above plus c1, c2, stage, done. The first
        call also reads `rollout/episodes`, the number of episodes the means are over."""
        prefix = f"env/{self.name}/"
        means = {k[len(prefix):]: v for k, v in stats.items() if k.startswith(prefix)}
        if "refused" not in means:
            return
        out = self.summarize(means)
        self.curriculum.update(means, out, stats.get("rollout/episodes"))
        c = self.curriculum
        stats.update({prefix + k: v for k, v in out.items()})
        stats.update({prefix + "c1": c.c1, prefix + "c2": c.c2, prefix + "stage": float(c.stage),
                      prefix + "done": float(c.done)})

    @property
    def done(self) -> bool:
        return self.curriculum.done

    def stage_thresholds(self) -> list[float]:
        return [h["c1"] for h in self.curriculum.history]

    def state_dict(self) -> dict[str, Any]:
        return {"curriculum": self.curriculum.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.curriculum.load_state_dict(state["curriculum"])
