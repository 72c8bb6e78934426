"""The adapter's agent loop, built the way verl builds it (hydra.utils.instantiate of the agent-loop yaml
`rlreason verl-config` writes, verl's composed config, rows read back by verl's RLHFDataset from the
parquet `rlreason data export --format verl` writes), driven by a server-manager stand-in backed by a real
local engine (rlreason's HF engine with the tiny model). Checks the AgentLoopOutput lists: one per Sample,
masks, logprob lengths, per-chunk rows, group-level and stateful rewards."""

from __future__ import annotations

import math
from pathlib import Path

import hydra
import pytest
import torch
from conftest import compose_verl
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM, AutoTokenizer
from verl.experimental.agent_loop.agent_loop import AgentLoopOutput, DictConfigWrap, ToolListWrap
from verl.utils.dataset.rl_dataset import RLHFDataset
from verl.workers.rollout.replica import TokenOutput

from rlreason.config import load_config
from rlreason.registry import ENVIRONMENTS
from rlreason.rollout.base import SamplingConfig
from rlreason.rollout.hf_engine import HFEngine
from rlreason.search.client import Document, SearchResult
from rlreason.verl.config_map import verl_overrides, write_agent_loop_yaml
from rlreason.verl.export import export_verl_parquet

G = 3
ROWS = [{"id": f"q{i}", "question": f"What is {i} + 1?", "answer": str(i + 1), "data_source": "toy",
         "info": "{}"} for i in range(2)]
QA_ROWS = [{"id": "paris", "question": "What is the capital of France?", "answer": '["Paris"]',
            "data_source": "toy_qa", "info": "{}"}]


class HFServerManager:
    """Stand-in for verl's LLMServerClient: `generate(request_id, prompt_ids, sampling_params)` ->
    TokenOutput, served by rlreason's HF engine (real forward passes, real sampling and logprobs)."""

    def __init__(self, engine: HFEngine) -> None:
        self.engine, self.calls = engine, 0

    async def generate(self, request_id, *, prompt_ids, sampling_params, **kwargs) -> TokenOutput:
        self.calls += 1
        p = dict(sampling_params)
        sampling = SamplingConfig(temperature=p.get("temperature", 1.0), top_p=p.get("top_p", 1.0),
                                  top_k=p.get("top_k", -1))
        c = await self.engine.generate(prompt_ids, max_tokens=p["max_tokens"], stop=p.get("stop"),
                                       seed=self.calls, sampling=sampling)
        return TokenOutput(token_ids=c.token_ids, log_probs=c.logprobs if p.get("logprobs") else None,
                           stop_reason="completed")


class ScriptedServerManager:
    """Returns fixed texts in turn (for the search path a random tiny model never takes)."""

    def __init__(self, tokenizer, texts: list[str]) -> None:
        self.ids = [tokenizer.encode(t, add_special_tokens=False) for t in texts]
        self.i: dict[int, int] = {}

    async def generate(self, request_id, *, prompt_ids, sampling_params, **kwargs) -> TokenOutput:
        k = len(prompt_ids) > 0 and prompt_ids[0]
        n = self.i.get(k, 0)
        self.i[k] = n + 1
        ids = self.ids[min(n, len(self.ids) - 1)]
        return TokenOutput(token_ids=ids, log_probs=[-0.5] * len(ids), stop_reason="completed")


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    return HFEngine(model, tokenizer=tok, sampling=SamplingConfig(temperature=1.0), max_model_len=1024)


def setup_run(tmp_path: Path, tiny_model_dir: str, env: dict, rewards: list, rows: list[dict]):
    """Config -> verl config + agent-loop yaml + parquet, as `rlreason verl-config` / `data export` do."""
    cfg = load_config(None, [f"env.name={env['name']}", f"trainer.samples_per_prompt={G}", "rollout.max_model_len=512",
                             f"model.name={tiny_model_dir}", "logging.wandb=false"])
    cfg.env.args = dict(env["args"])
    cfg.env.markovian = env.get("markovian")
    cfg.rewards = rewards
    yaml_path = write_agent_loop_yaml(cfg, tmp_path / "agent_loops.yaml")
    parquet = export_verl_parquet(rows, tmp_path / "train.parquet", env_name=cfg.env.name, env_args=cfg.env.args)
    overrides = verl_overrides(cfg, nodes=1, gpus_per_node=1, run_dir=str(tmp_path), train_files=str(parquet),
                               val_files=str(parquet), agent_loop_config=str(yaml_path))
    verl_cfg = compose_verl(overrides)
    return cfg, verl_cfg, OmegaConf.load(yaml_path)[0]


def dataset_rows(verl_cfg, tokenizer) -> list[dict]:
    ds = RLHFDataset(data_files=[verl_cfg.data.train_files], tokenizer=tokenizer, config=verl_cfg.data)
    return [ds[i] for i in range(len(ds))]


def run_groups(engine, verl_cfg, entry, rows, server_manager) -> dict[tuple[int, int], list[AgentLoopOutput]]:
    """G sessions per row, all concurrently, each through a freshly instantiated agent loop (as verl does)."""
    sampling = dict(temperature=1.0, top_p=1.0, top_k=-1, repetition_penalty=1.0, logprobs=True)

    async def one(i: int, row: dict, session: int):
        loop = hydra.utils.instantiate(config=entry, trainer_config=DictConfigWrap(config=verl_cfg),
                                       server_manager=server_manager, tokenizer=engine.tokenizer, processor=None,
                                       hf_model_type="llama", dataset_cls=RLHFDataset,
                                       data_config=DictConfigWrap(verl_cfg.data), tools=ToolListWrap([]))
        kwargs = {k: v for k, v in row.items() if k != "dummy_tensor"}
        return (i, session), await loop.run(sampling, uid=f"uid{i}", session_id=session, global_steps=1, **kwargs)

    results = engine.run([one(i, row, s) for i, row in enumerate(rows) for s in range(G)])
    return dict(results)


def check_outputs(outs: list[AgentLoopOutput], verl_cfg) -> None:
    assert isinstance(outs, list) and outs and all(isinstance(o, AgentLoopOutput) for o in outs)
    for o in outs:
        n = len(o.response_ids)
        assert n >= 1
        assert len(o.response_mask) == n and len(o.response_logprobs) == n
        assert set(o.response_mask) <= {0, 1}
        assert 0 < len(o.prompt_ids) <= verl_cfg.data.max_prompt_length
        assert n <= verl_cfg.data.max_response_length
        assert all(lp <= 1e-6 and math.isfinite(lp) for lp in o.response_logprobs)
        assert o.reward_score == outs[-1].reward_score  # one reward per episode, on every row
        d = o.as_dict()  # verl's own conversion to tensors (what V1 puts into TransferQueue)
        assert d["responses"].shape == d["response_mask"].shape == d["rollout_log_probs"].shape
        assert "reward_extra_info" in o.extra_fields
    assert [bool(o.extra_fields.get("rlreason_final")) for o in outs] == [False] * (len(outs) - 1) + [True]


def test_export_reads_back_through_verl_dataset(tmp_path, tiny_model_dir, engine):
    _, verl_cfg, _ = setup_run(tmp_path, tiny_model_dir, {"name": "single_turn", "args": {"max_tokens": 8}},
                               [{"name": "math"}], ROWS)
    rows = dataset_rows(verl_cfg, engine.tokenizer)
    assert [r["extra_info"]["id"] for r in rows] == ["q0", "q1"]
    assert rows[0]["agent_name"] == "rlreason_single_turn"
    assert rows[0]["reward_model"]["ground_truth"] == "1"
    assert rows[0]["raw_prompt"][-1]["content"].startswith("What is 0 + 1?")


def test_single_turn(tmp_path, tiny_model_dir, engine):
    _, verl_cfg, entry = setup_run(tmp_path, tiny_model_dir, {"name": "single_turn", "args": {"max_tokens": 12}},
                                   [{"name": "math", "weight": 1.0}, {"name": "boxed_format", "weight": 0.2}], ROWS)
    results = run_groups(engine, verl_cfg, entry, dataset_rows(verl_cfg, engine.tokenizer), HFServerManager(engine))
    assert len(results) == len(ROWS) * G
    for outs in results.values():
        check_outputs(outs, verl_cfg)
        assert len(outs) == 1 and all(m == 1 for m in outs[0].response_mask)
        info = outs[0].extra_fields["reward_extra_info"]
        assert {"reward/math", "reward/boxed_format", "env/single_turn/response_tokens"} <= set(info)


def test_markovian_one_row_per_chunk(tmp_path, tiny_model_dir, engine):
    args = {"chunk_size": 16, "carryover": 8, "keep_head": 2, "max_chunks": 3}
    _, verl_cfg, entry = setup_run(tmp_path, tiny_model_dir, {"name": "markovian", "args": args},
                                   [{"name": "math"}], ROWS)
    assert verl_cfg.data.max_response_length == 16  # a row holds one chunk
    results = run_groups(engine, verl_cfg, entry, dataset_rows(verl_cfg, engine.tokenizer), HFServerManager(engine))
    for outs in results.values():
        check_outputs(outs, verl_cfg)
        chunks = outs[0].extra_fields["reward_extra_info"]["env/markovian/chunks"]
        assert len(outs) == chunks and 1 <= chunks <= 3
        q = outs[0].prompt_ids
        for i, o in enumerate(outs[1:], start=1):
            assert o.prompt_ids[:len(q)] == q  # every chunk restarts from the query ...
            assert len(o.prompt_ids) == len(q) + 2 + 6  # ... + head (2) + carry (m - head = 6)
            assert len(o.response_ids) <= 16 - 8  # later chunks write C - m tokens
        assert [o.extra_fields["rlreason_row"] for o in outs] == list(range(len(outs)))


def test_env_markovian_composes_on_verl(tmp_path, tiny_model_dir, engine):
    """`env.markovian` around single_turn reaches the agent loop (agent-loop yaml -> build_environment) and
    gives the `markovian` environment's rows: one per chunk, each from the query + head + carry."""
    delethink = {"chunk_size": 16, "carryover": 8, "keep_head": 2, "max_chunks": 3}
    _, verl_cfg, entry = setup_run(tmp_path, tiny_model_dir, {"name": "single_turn", "args": {},
                                                              "markovian": delethink}, [{"name": "math"}], ROWS)
    assert dict(entry.env_markovian) == delethink and entry.env_name == "single_turn"
    assert verl_cfg.data.max_response_length == 16  # a row holds one chunk
    results = run_groups(engine, verl_cfg, entry, dataset_rows(verl_cfg, engine.tokenizer), HFServerManager(engine))
    for outs in results.values():
        check_outputs(outs, verl_cfg)
        chunks = outs[0].extra_fields["reward_extra_info"]["env/single_turn/chunks"]
        assert len(outs) == chunks and 1 <= chunks <= 3
        q = outs[0].prompt_ids
        for o in outs[1:]:
            assert o.prompt_ids[:len(q)] == q and len(o.prompt_ids) == len(q) + 2 + 6
            assert len(o.response_ids) <= 16 - 8 and set(o.response_mask) == {1}


@pytest.mark.skipif("pay_per_search" not in ENVIRONMENTS, reason="environments/pay_per_search.py not present")
def test_pay_per_search_real_engine_and_group_reward(tmp_path, tiny_model_dir, engine):
    args = {"max_turn_tokens": 8, "max_response_tokens": 40, "max_searches": 1, "timeout_s": 0.2, "retries": 0}
    _, verl_cfg, entry = setup_run(tmp_path, tiny_model_dir, {"name": "pay_per_search", "args": args},
                                   [{"name": "search_cost", "args": {"penalty": "exp", "lam": 0.5}}], QA_ROWS)
    results = run_groups(engine, verl_cfg, entry, dataset_rows(verl_cfg, engine.tokenizer), HFServerManager(engine))
    for outs in results.values():
        check_outputs(outs, verl_cfg)
        assert len(outs) == 1


@pytest.mark.skipif("pay_per_search" not in ENVIRONMENTS, reason="environments/pay_per_search.py not present")
def test_pay_per_search_injected_documents_are_masked_and_n_min_is_group_level(tmp_path, tiny_model_dir, engine):
    args = {"max_turn_tokens": 16, "max_response_tokens": 120, "max_searches": 2}
    _, verl_cfg, entry = setup_run(tmp_path, tiny_model_dir, {"name": "pay_per_search", "args": args},
                                   [{"name": "search_cost", "args": {"penalty": "exp", "lam": 0.5}}], QA_ROWS)
    rows = dataset_rows(verl_cfg, engine.tokenizer)
    from rlreason.verl import agent_loop as al
    env = al._environment("pay_per_search", dict(entry.env_args), engine.tokenizer)

    async def fake_search(query: str) -> SearchResult:
        return SearchResult(docs=[Document("1", "Paris", "Paris is the capital of France.")])
    env.client.search = fake_search
    # session 0 answers at once (0 searches), sessions 1 and 2 search once first: n_min = 0 for the group
    script = {0: ["<answer> Paris </answer>"],
              1: ["<search> capital of France </search>", "<answer> Paris </answer>"],
              2: ["<search> capital of France </search>", "<answer> Paris </answer>"]}
    managers = {s: ScriptedServerManager(engine.tokenizer, t) for s, t in script.items()}

    sampling = dict(temperature=1.0, top_p=1.0, top_k=-1, logprobs=True)

    async def one(s):
        loop = hydra.utils.instantiate(config=entry, trainer_config=DictConfigWrap(config=verl_cfg),
                                       server_manager=managers[s], tokenizer=engine.tokenizer, processor=None,
                                       dataset_cls=RLHFDataset, data_config=DictConfigWrap(verl_cfg.data),
                                       tools=ToolListWrap([]))
        kwargs = {k: v for k, v in rows[0].items() if k != "dummy_tensor"}
        return s, await loop.run(sampling, uid="paris-uid", session_id=s, **kwargs)

    out = dict(engine.run([one(s) for s in range(G)]))
    for s, outs in out.items():
        check_outputs(outs, verl_cfg)
        (o,) = outs
        info = o.extra_fields["reward_extra_info"]
        assert info["env/pay_per_search/searches"] == (0.0 if s == 0 else 1.0)
        assert info["reward/search_cost/n_min"] == 0.0  # the fewest searches of the whole group
        if s == 0:
            assert set(o.response_mask) == {1} and o.reward_score == pytest.approx(1.0)
        else:
            assert 0 in o.response_mask  # the retrieved document is injected, never trained
            injected = [lp for lp, m in zip(o.response_logprobs, o.response_mask) if m == 0]
            assert injected and all(lp == 0.0 for lp in injected)
            assert o.reward_score == pytest.approx(0.5)  # lam^(m - n_min) = 0.5^1
