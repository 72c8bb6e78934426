"""The MASH comparison's warm start (launch/mash_small_cpu.sh): QA-world SFT lines in the RL runs' exact prompt
(configs/mash_small_cpu.yaml), trained by the SFT plug-in of the one training loop on tiny-random (HF engine),
ending in a Hugging Face directory that an RL run loads as model.name."""

import json

from rlreason.config import load_config
from rlreason.data.qa_world import build_qa_world, write_sft
from rlreason.data.schema import loads_info
from rlreason.environments.pay_per_search import PayPerSearch
from rlreason.trainer.loop import train

RL = "configs/mash_small_cpu.yaml"
SFT = "configs/mash_small_sft_cpu.yaml"


def _lines(tmp_path, size=8):
    out = tmp_path / "warm.jsonl"
    env_args = dict(load_config(RL).env.args)
    counts = write_sft(out, size=size, n_entities=20, env_args=env_args)
    return out, counts, [json.loads(x) for x in out.read_text().splitlines()], env_args


def test_warm_start_rows_use_the_rl_prompt_and_do_not_reopen_its_thought(tmp_path):
    _, counts, lines, env_args = _lines(tmp_path, size=12)
    env = PayPerSearch(None, **env_args)
    ds = build_qa_world("train", size=12, n_entities=20)
    assert counts["search"] == counts["direct"] == 6
    for row, line in zip(ds, lines):
        assert line["prompt"] == env.prompt(row) and line["prompt"].endswith("<think>")
        c = line["completion"]
        assert not c.lstrip().startswith("<think>")  # the prompt opened it: "<think> <think>" never trains
        assert c.count("</think>") == c.count("<think>") + 1
        assert c.rstrip().endswith(f"<answer> {row['answer']} </answer>")
        assert ("<search>" in c) == (loads_info(row["info"])["type"] == "must_search")


def test_sft_rl_configs_share_the_prompt():
    """The warm start learns in the RL runs' context: same template, style and turn/doc limits."""
    rl, sft = load_config(RL).env, load_config(SFT).env
    assert sft.name == rl.name == "pay_per_search"
    for key in ("template", "style", "max_doc_words", "max_searches", "max_turn_tokens", "max_response_tokens"):
        assert sft.args[key] == rl.args[key], key


def test_sft_warm_start_on_tiny_random_ends_in_an_hf_directory(tmp_path):
    path, _, lines, _ = _lines(tmp_path)
    cfg = load_config(SFT, [f"data.train.path={path}", "model.name=tiny-random", "model.dtype=fp32",
                            "rollout.engine=hf", "sft.batch_size=4", "trainer.micro_batch_size=4",
                            f"output_dir={tmp_path}/warm"])
    train(cfg)
    run = tmp_path / "warm"
    steps = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in steps if "loss/sft" in r]
    assert len(steps) == cfg.sft.epochs * 2  # 8 rows / batch 4 per epoch
    latest = json.loads((run / "checkpoints" / "latest.json").read_text())["path"]
    from transformers import AutoModelForCausalLM
    AutoModelForCausalLM.from_pretrained(run / "checkpoints" / latest)  # what the RL arms load as model.name
    assert load_config(RL, [f"model.name={run / 'checkpoints' / latest}"]).model.name.endswith(latest)


def test_the_pay_per_search_configs_build_their_environment_and_rewards():
    """Every shipped pay_per_search config gets as far as a run's rubric and environment (a reward argument the
    code refuses, like a second hand-set max_searches, fails here rather than minutes into a launch)."""
    from rlreason.registry import build_environment
    from rlreason.rubric import Rubric
    for path in ("configs/qa_world_cpu.yaml", "configs/pay_per_search_cpu.yaml", RL):
        cfg = load_config(path)
        Rubric(cfg.rewards)
        build_environment(cfg.env.name, None, cfg.env.args)


def test_warm_start_episodes_fit_the_rl_response_budget(tmp_path, tiny_tokenizer):
    """An SFT search episode (thought, search, the injected passages, answer) longer than the RL run's
    env.args.max_response_tokens would be cut before its answer in every RL rollout that imitates it."""
    out = tmp_path / "warm.jsonl"
    env_args = dict(load_config(RL).env.args)
    write_sft(out, size=96, env_args=env_args)  # the RL world (200 entities): its real names and passages
    lens = [len(tiny_tokenizer.encode(json.loads(x)["completion"], add_special_tokens=False)) + 1  # + EOS
            for x in out.read_text().splitlines()]
    assert max(lens) <= env_args["max_response_tokens"], max(lens)
