"""Run configuration: one dataclass per section, each field's default written once, its comment the
help text. YAML files and dotted overrides (`trainer.lr=1e-6`, as verl users expect) are merged and
checked strictly: an unknown key or a bad value names the key and what is allowed."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from rlreason.registry import ConfigError, import_modules, suggest


@dataclass
class ModelConfig:
    name: str = "smollm2-135m-instruct"  # a name from `rlreason models list`, a local HF dir or a hub id
    # Engine weights and training autocast (fp32 master weights either way). auto = bf16 where bf16 matmuls run
    # in hardware (GPUs, CPUs with AVX512-BF16/AMX), fp32 elsewhere; resolved once per run (models.compute_dtype).
    dtype: Literal["auto", "bf16", "fp32"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto = cuda when available
    gradient_checkpointing: bool = False  # trade compute for activation memory on long sequences
    # Trainer attention: auto = rlreason_cpu on CPU (grouped bf16 matmuls for short contexts, SDPA otherwise;
    # trainer/cpu_attention.py), sdpa on GPU; or any transformers name (eager, sdpa, flash_attention_2, ...).
    attn_implementation: str = "auto"


@dataclass
class DataConfig:
    train: dict = field(default_factory=lambda: {"source": "reasoning_gym", "task": "basic_arithmetic",
                                                 "size": 1000})  # builder spec, see `rlreason data --help`
    eval: dict | None = None  # held-out builder spec; None = `eval_size` rows split off train
    eval_size: int = 64  # rows held out from train when `eval` is None


@dataclass
class EnvConfig:
    name: str = "single_turn"  # a registered environment (`rlreason.environments` entry point)
    args: dict = field(default_factory=dict)  # keyword arguments of the environment's constructor
    markovian: dict | None = None  # Delethink chunks around env.name: {chunk_size, carryover, keep_head, max_chunks}


@dataclass
class RolloutConfig:
    engine: Literal["vllm", "hf"] = "vllm"  # vllm everywhere it runs; hf is the fallback
    temperature: float = 1.0
    top_p: float = 1.0
    max_model_len: int = 2048  # prompt + response tokens per request
    kv_cache_gb: float = 2.0  # CPU KV cache size in GiB (fractions allowed); GPUs use gpu_memory_utilization
    gpu_memory_utilization: float = 0.4  # GPU share vLLM may take (the trainer shares the device)
    sleep_mode: bool = True  # GPU: vLLM frees its weights and KV cache during the update (docs/gpu.md); CPU has none
    enable_prefix_caching: bool = True  # G samples of a prompt share its KV


@dataclass
class AlgoConfig:
    advantage: str = "grpo"  # grpo | dr_grpo | rloo | reinforce_pp_baseline | gae (PPO with a critic)
    policy_loss: str = "ppo_clip"  # a registered policy loss
    loss_agg_mode: str = "token-mean"  # token-mean | seq-mean-token-sum | seq-mean-token-mean | trace-length-norm
    eps_low: float = 0.2  # PPO clip below 1
    eps_high: float = 0.2  # PPO clip above 1 (0.28 = DAPO clip-higher)
    dual_clip_c: float | None = 3.0  # dual-clip bound for negative advantages; null disables
    tis_cap: float | None = 2.0  # truncated importance weight engine->trainer; null disables
    kl_coef: float = 0.0  # > 0 loads a frozen reference model
    kl_estimator: str = "k3"  # k1 | k2 | k3
    kl_in_reward: bool = False  # subtract kl_coef * KL from the reward instead of adding it to the loss
    entropy_coef: float = 0.0  # entropy bonus
    dynamic_sampling: bool = False  # DAPO: refill the batch with groups whose rewards are not all equal
    max_sampling_rounds: int = 10  # generation rounds per step at most when refilling (verl max_num_gen_batches)
    adv_eps: float = 1e-6
    gamma: float = 1.0  # GAE discount (advantage=gae)
    lam: float = 1.0  # GAE lambda (advantage=gae)
    value_coef: float = 0.5  # critic loss weight (advantage=gae)
    value_clip: float = 0.2  # critic value clipping (advantage=gae)


@dataclass
class TrainerConfig:
    steps: int = 20  # optimizer steps (one rollout batch each)
    prompts_per_step: int = 8
    samples_per_prompt: int = 4  # G, the group size
    lr: float = 1e-6
    weight_decay: float = 0.0
    warmup_steps: int = 0
    ppo_epochs: int = 1  # passes over each rollout batch
    mini_batches: int = 1  # optimizer steps per pass; 1 x 1 = on-policy, no extra forward
    # Rows per forward/backward (gradient accumulation); where a mini-batch's prompts run once (shared prompts,
    # docs/cpu.md) it caps a micro-batch's tokens at micro_batch_size x the longest response instead.
    micro_batch_size: int = 8
    # Rows with the same prompt run it once (exact). auto = on CPU only: on an H200 the two-pass shared forward
    # of SmolLM2-135M was 2.2x slower than one pass per row (launch-bound), on 2 CPU cores 1.35x faster.
    share_prompt_forward: Literal["auto", True, False] = "auto"
    max_grad_norm: float | None = 1.0  # gradient-norm clip; null = no clipping
    # Leave rows with advantage exactly 0 (a GRPO group whose samples all scored alike) out of the forward and
    # backward: they add nothing to the gradient of the built-in losses, so the update is the same (exact), and
    # loss/ metrics are then means over the rows that train. Off: every row runs (metrics over all rows).
    skip_zero_advantage: bool = True
    max_nonfinite_steps: int = 3  # consecutive NaN/inf losses tolerated (skipped) before stopping
    checkpoint_every: int = 10  # steps; 0 = only at the end
    keep_checkpoints: int = 2


@dataclass
class EvalConfig:
    every: int = 0  # steps between evaluations on the held-out split; 0 = never during training
    k: int = 4  # samples per problem for pass@k / avg@k
    max_problems: int = 64
    temperature: float = 1.0


@dataclass
class LoggingConfig:
    wandb: bool = True  # offline automatically without WANDB_API_KEY
    wandb_project: str = "rlreason"
    progress: bool = True  # progress bar
    log_samples: int = 2  # transcripts written to samples.jsonl per step
    probe_dir: str | None = None  # a saved refusal probe (`rlreason probe train`): log probe/* metrics
    probe_every: int = 10  # steps between probe measurements (with probe_dir)
    probe_prompts: int = 16  # fixed JailbreakBench prompts the probe monitor scores


@dataclass
class ExpertIterationConfig:
    """algorithm=expert_iteration (Auto-CEI, arXiv 2410.07627; rlreason/trainer/expert_iteration.py). It also
    reads trainer.lr / weight_decay / warmup_steps / micro_batch_size / max_grad_norm / max_nonfinite_steps /
    checkpoint_every (in rounds) / keep_checkpoints, rollout.* for sampling and eval.* for the held-out
    measurement; the curriculum (lam, step, stage rule) is the environment's (env.args of curriculum_ei)."""

    rounds: int = 30  # expert-iteration rounds at most (the curriculum's stop rule can end the run sooner)
    questions_per_round: int = 0  # training questions sampled per round; 0 = the whole training set (paper)
    samples_per_question: int = 16  # N answers per question (paper: 16, at rollout.temperature 1.0)
    resample_temperature: float | None = None  # T in exp(R / T); null = the initial model's precision (paper)
    resample_factor: float = 1.0  # weighted draws per original answer, added to the originals
    batch_size: int = 16  # fine-tuning rows per optimizer step (split into trainer.micro_batch_size)
    lora_rank: int = 0  # 0 = full fine-tuning; > 0 = LoRA of this rank on every linear layer (paper: 128)
    lora_alpha: float | None = None  # LoRA scale is alpha / rank; null = 2 x lora_rank


@dataclass
class SFTConfig:
    """algorithm=sft (rlreason/trainer/sft.py): supervised fine-tuning on data.train's {prompt, completion}
    rows (source: sft_jsonl), prompt tokens masked, response = completion + EOS. It reads trainer.lr /
    weight_decay / warmup_steps / micro_batch_size / max_grad_norm / max_nonfinite_steps / checkpoint_every /
    keep_checkpoints (trainer.steps, prompts_per_step and samples_per_prompt do not apply), data.eval for
    eval.every, and env.* for the prompt encoding, so a warm start sees the RL run's exact context."""

    epochs: int = 1  # passes over data.train
    batch_size: int = 32  # rows per optimizer step (split into trainer.micro_batch_size); ceil(rows / batch_size) steps per epoch


@dataclass
class RunConfig:
    name: str = "run"
    output_dir: str = "runs/${name}"
    seed: int = 0
    algorithm: Literal["grpo", "expert_iteration", "sft"] = "grpo"  # trainer/grpo.py, expert_iteration.py, sft.py
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    rewards: list = field(default_factory=lambda: [{"name": "math", "weight": 1.0}])
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    ei: ExpertIterationConfig = field(default_factory=ExpertIterationConfig)  # algorithm=expert_iteration
    sft: SFTConfig = field(default_factory=SFTConfig)  # algorithm=sft
    imports: list = field(default_factory=list)  # modules imported before any lookup (your @register_environment)

    def __post_init__(self) -> None:
        self.rewards = reward_specs(self.rewards)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir.replace("${name}", self.name))


# ------------------------------------------------------------------------------------------------
def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """`a.b=1` -> {"a": {"b": 1}}; values are parsed as YAML (numbers, bools, lists, null)."""
    out: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value (e.g. trainer.lr=1e-6)")
        key, raw = item.split("=", 1)
        try:
            value = _parse_scalar(raw)
        except yaml.YAMLError as e:
            raise ConfigError(f"override '{_clip(item)}': the value is not valid YAML "
                              f"({getattr(e, 'problem', None) or str(e).splitlines()[0]})") from e
        except (ValueError, RecursionError) as e:  # a 5,000-digit integer, nesting too deep
            raise ConfigError(f"override '{_clip(item)}': bad value ({_clip(str(e) or type(e).__name__)})") from e
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}': '{p}' is not a section")
        node[parts[-1]] = value
    return out


def _clip(text: str, n: int = 80) -> str:
    return text if len(text) <= n else f"{text[:n]}... ({len(text)} characters)"


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last one silently, so
    a second `lr:` further down a file would change what trains without a word)."""

    def construct_mapping(self, node: Any, deep: bool = False) -> dict:
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, typing.Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key '{key}' given twice (first on line {seen[key].line + 1})", key_node.start_mark)
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def _parse_scalar(raw: str) -> Any:
    """YAML, except that `1e-6` is a number (YAML 1.1 reads exponents without a dot as strings)."""
    value = yaml.load(raw, Loader=_StrictLoader) if raw != "" else ""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(path: str | None = None, overrides: list[str] | None = None) -> RunConfig:
    """The YAML file (with its `defaults:` chain) merged with the overrides, checked, and its `imports:`
    imported, so the environments and rewards they register can be looked up."""
    raw: dict[str, Any] = load_config_dict(Path(path)) if path else {}
    raw = deep_merge(raw, parse_overrides(overrides or []))
    cfg = from_dict(RunConfig, raw, "")
    import_modules(cfg.imports, "imports")
    return cfg


def read_yaml(path: Path, what: str = "config file") -> dict[str, Any]:
    """One YAML mapping; a missing file, bad encoding or syntax error is a ConfigError naming the file
    (and the line and column of a syntax error)."""
    if not path.is_file():
        raise ConfigError(f"{what} '{path}' does not exist")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_StrictLoader)
    except UnicodeDecodeError as e:
        raise ConfigError(f"{what} '{path}' is not UTF-8 text (byte {e.start})") from e
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}{where}: invalid YAML: {problem}") from e
    except RecursionError as e:
        raise ConfigError(f"{path}: YAML nested too deeply") from e
    except ValueError as e:  # e.g. an integer of more than 4300 digits
        raise ConfigError(f"{path}: bad value: {_clip(str(e))}") from e
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError(f"{what} '{path}' must hold a mapping at the top level, got {type(raw).__name__}")
    return raw


def load_config_dict(path: Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML file with its `defaults: other.yaml` chain (relative to the file) merged under it."""
    path = Path(path)
    what = "config file" if not _chain else f"defaults file (from {_chain[-1]})"
    raw = read_yaml(path, what)
    if "defaults" not in raw:
        return raw
    base = raw.pop("defaults")
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{path}: defaults: expected a file name (e.g. defaults: base.yaml), got {base!r}")
    chain = (*_chain, path.resolve())
    target = (path.parent / base).resolve()
    if target in chain:
        cycle = " -> ".join(str(p) for p in (*chain[chain.index(target):], target))
        raise ConfigError(f"{path}: defaults cycle: {cycle}")
    return deep_merge(load_config_dict(path.parent / base, chain), raw)


def from_dict(cls: type, raw: dict[str, Any], prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for k, v in raw.items():
        key = f"{prefix}{k}"
        if k not in fields:
            allowed = list(fields)
            raise ConfigError(f"{key}: unknown key. Allowed in {prefix.rstrip('.') or 'the top level'}: "
                              f"{', '.join(allowed)}." + suggest(k, allowed))
        kwargs[k] = _coerce(hints[k], v, key)
    return cls(**kwargs)


def _coerce(tp: Any, v: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, v or {}, key + ".")
    if origin is Literal:
        allowed = typing.get_args(tp)
        if v not in allowed:
            raise ConfigError(f"{key}: '{v}' is not allowed. Allowed: {', '.join(map(str, allowed))}.")
        return v
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if v is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, v, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {v!r}")
    if tp is bool:
        if not isinstance(v, bool):
            raise ConfigError(f"{key}: expected true or false, got {v!r}")
        return v
    if tp is int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(f"{key}: expected an integer, got {v!r}")
        return v
    if tp is float:
        if isinstance(v, str):  # `lr: 1e-6` in a YAML file arrives as a string
            try:
                v = float(v)
            except ValueError:
                pass
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {v!r}")
        return float(v)
    if tp is str:
        if isinstance(v, (int, float)) and not isinstance(v, bool):  # `name=123` on the command line
            v = str(v)
        if not isinstance(v, str):
            raise ConfigError(f"{key}: expected a string, got {v!r}")
        return v
    if tp is dict or origin is dict:
        if not isinstance(v, dict):
            raise ConfigError(f"{key}: expected a mapping, got {v!r}")
        return v
    if tp is list or origin is list:
        if not isinstance(v, list):
            raise ConfigError(f"{key}: expected a list, got {v!r}")
        return v
    return v


def reward_specs(rewards: Any) -> list[dict[str, Any]]:
    """`rewards: [math, {name: boxed_format, weight: 0.5}]`: a bare name is {name: <it>}."""
    if not isinstance(rewards, list):
        raise ConfigError(f"rewards: expected a list of reward names or {{name, weight, args}} mappings, got {rewards!r}")
    out = []
    for i, r in enumerate(rewards):
        if isinstance(r, str):
            r = {"name": r}
        if not isinstance(r, dict):
            raise ConfigError(f"rewards[{i}]: expected a reward name or a {{name, weight, args}} mapping, got {r!r}")
        out.append(r)
    return out


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
