"""The one contract everything shares: an Environment turns an example into an Episode by talking to
a Policy handle. It never sees the trainer or the engine, which is what lets the same class run on
the local trainer and inside verl's agent loop (docs/architecture.md)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

FinishReason = Literal["stop", "length"]


@dataclass
class Completion:
    """What one generation call returns; `logprobs` are the behaviour policy's, one per token."""

    token_ids: list[int]
    logprobs: list[float]
    finish_reason: FinishReason
    text: str = ""

    def __post_init__(self) -> None:
        if len(self.token_ids) != len(self.logprobs):
            raise ValueError(
                f"Completion has {len(self.token_ids)} tokens but {len(self.logprobs)} logprobs")


@runtime_checkable
class Policy(Protocol):
    """Token ids in, token ids + logprobs out. Sampling settings (temperature, top_p) belong to the
    engine behind the handle, so an environment cannot silently change the behaviour policy."""

    async def generate(self, prompt_ids: list[int], *, max_tokens: int,
                       stop: list[str] | None = None) -> Completion: ...


@dataclass
class Sample:
    """One training row. `response_mask` is 1 on tokens the policy generated (trained) and 0 on text
    the environment injected (retrieved documents, tool messages): those never get a gradient."""

    prompt_ids: list[int]
    response_ids: list[int]
    response_logprobs: list[float]
    response_mask: list[int]

    def __post_init__(self) -> None:
        n = len(self.response_ids)
        if len(self.response_logprobs) != n or len(self.response_mask) != n:
            raise ValueError(
                f"Sample fields disagree: {n} response_ids, {len(self.response_logprobs)} logprobs, "
                f"{len(self.response_mask)} mask entries")

    @property
    def num_trained_tokens(self) -> int:
        return int(sum(self.response_mask))


@dataclass
class Episode:
    """The result of one rollout: >= 1 samples (Delethink returns one per chunk) sharing one reward.

    `reward` is filled in by the rubric after the whole group is done (group-level rewards need
    every episode of the question); `reward_components` keeps each named term for logging."""

    samples: list[Sample]
    transcript: str
    metrics: dict[str, float] = field(default_factory=dict)
    reward: float = 0.0
    reward_components: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_trained_tokens(self) -> int:
        return sum(s.num_trained_tokens for s in self.samples)


@dataclass(frozen=True)
class RowBound:
    """The most tokens one training row (Sample) of an environment can hold, declared before any rollout so
    a scale-out engine can size its fixed-width buffers (verl pads every row to data.max_prompt_length +
    data.max_response_length and would otherwise truncate). A row's prompt is the rendered query plus at
    most `prompt_extra` tokens (Delethink's carryover); its response is at most `response` tokens."""

    prompt_extra: int
    response: int


class Environment(ABC):
    """Base class of every environment. Subclasses implement `rollout` and nothing else is required.

    Constructor keyword arguments come from the config's `env.args`; unknown keys are rejected
    with the list of allowed ones before the run starts (see `rlreason.registry.build`)."""

    name: ClassVar[str] = ""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    @abstractmethod
    async def rollout(self, example: dict, policy: Policy) -> Episode:
        """Run one episode of `example` against `policy`."""

    def row_bound(self) -> RowBound | None:
        """Most tokens of one training row (see RowBound); None = undeclared (verl-config then refuses
        the environment, since it cannot size verl's rows)."""
        return None

    def on_step_end(self, stats: dict[str, float]) -> None:
        """Called by the trainer after every optimizer step with that step's metrics (curricula)."""

    def state_dict(self) -> dict[str, Any]:
        """Anything that must survive a resume (curriculum state). JSON-serialisable."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} has no state but a checkpoint holds {list(state)}")

    # --- helpers shared by environments -------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def encode_prompt(self, prompt: str | list[dict[str, str]]) -> list[int]:
        """A string prompt is used as raw text (continuation style); a message list goes through the
        tokenizer's chat template with the generation prompt appended."""
        if isinstance(prompt, str):
            bos = getattr(self.tokenizer, "bos_token_id", None)
            ids = self.encode(prompt)
            return ([bos] + ids) if bos is not None and getattr(self.tokenizer, "add_bos_token", False) else ids
        return list(self.tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True,
                                                       return_dict=False))


class CurriculumEnvironment(Environment):
    """An environment whose answers may be refusals ("I don't know") and which owns a curriculum over how
    much trying a refusal must show: what expert iteration (`algorithm: expert_iteration`, Auto-CEI) needs.

    The trainer calls `on_step_end` with each round's metrics (the first call, with the initial model's
    held-out measurement, initialises the curriculum; later calls advance it and add its quantities to
    the metrics), stops when `done`, and reports `stage_thresholds`. Subclass it and implement the three
    members below (environments/curriculum_ei.py is the reference)."""

    @abstractmethod
    def summarize(self, means: dict[str, float]) -> dict[str, float]:
        """Outcome statistics from per-episode metric means (keys without the `env/<name>/` prefix): at
        least accuracy, precision, refusal_rate, f and steps_before_refusal, as the trainer logs them."""

    @property
    @abstractmethod
    def done(self) -> bool:
        """The curriculum's stop rule fired: no further round can improve it."""

    @abstractmethod
    def stage_thresholds(self) -> list[float]:
        """The refusal threshold (c1) in force at the start and at each stage end, for the run's report."""
