"""algorithm=sft: the plug-in of the one training loop (warm starts, repair, baselines) and its data
source `sft_jsonl`, on the tiny random model with the HF engine."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from rlreason.config import load_config
from rlreason.data import build_dataset
from rlreason.data.jsonl import DataError
from rlreason.registry import ConfigError
from rlreason.trainer.loop import train

CHAT = [{"role": "user", "content": "What is 2+3?"}]


def _write(path, lines):
    path.write_text("".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines))
    return path


@pytest.fixture
def sft_file(tmp_path):
    lines = [{"prompt": [{"role": "user", "content": f"What is {i}+3?"}], "completion": f"{i}+3={i + 3}. \\boxed{{{i + 3}}}"}
             for i in range(9)]
    lines.append({"prompt": "Raw: 2+2=", "completion": "4"})
    return _write(tmp_path / "train.jsonl", lines)


def cfg(tmp_path, sft_file, *extra):
    return load_config(None, [
        "algorithm=sft", "model.name=tiny-random", "model.dtype=fp32", "rollout.engine=hf",
        "rollout.max_model_len=256", f"data.train={{source: sft_jsonl, path: {sft_file}}}",
        "env.args.max_tokens=4", "sft.batch_size=4", "trainer.micro_batch_size=3", "trainer.lr=1e-3",
        "trainer.checkpoint_every=1", "logging.wandb=false", "logging.progress=false",
        f"output_dir={tmp_path}/run", *extra])


def _rows(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_sft_run_trains_ceil_rows_over_batch_steps_per_epoch_and_ends_in_an_hf_directory(tmp_path, sft_file):
    summary = train(cfg(tmp_path, sft_file, "sft.epochs=2", "eval.every=3", "eval.k=1",
                        "data.eval={source: reasoning_gym, task: basic_arithmetic, size: 2}"))
    run = tmp_path / "run"
    steps = [r for r in _rows(run) if "loss/sft" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6]  # 2 epochs x ceil(10 / 4)
    assert [r["sft/rows"] for r in steps] == [4, 4, 2] * 2  # an epoch's last batch is its remainder
    assert steps[-1]["sft/epoch"] == 2.0
    assert all(math.isfinite(r["loss/sft"]) and r["loss/grad_norm"] > 0 for r in steps)
    assert [r["step"] for r in _rows(run) if "eval/pass@k" in r] == [0, 3, 6]
    assert "loss/sft: first" in summary
    final = run / "checkpoints" / "step_000006"
    from transformers import AutoModelForCausalLM
    AutoModelForCausalLM.from_pretrained(final)  # a Hugging Face model directory, as later runs load it
    later = load_config(None, [f"model.name={final}"])
    from rlreason.models import resolve_model
    assert resolve_model(later.model.name, dtype="fp32") == str(final)


def test_sft_resume_continues_exactly(tmp_path, sft_file):
    """3 steps straight == 2 steps, stop, --resume, 1 more (weights and losses), crossing an epoch."""
    train(cfg(tmp_path / "a", sft_file, "sft.epochs=2"))
    b = cfg(tmp_path / "b", sft_file, "sft.epochs=2")
    from rlreason.trainer import loop
    real = loop.checkpoint
    calls = []

    def stop_after_two(run):  # a kill right after the checkpoint of step 4
        real(run)
        calls.append(run.step)
        if run.step == 4:
            raise KeyboardInterrupt

    loop.checkpoint = stop_after_two
    try:
        with pytest.raises(KeyboardInterrupt):
            train(b)
    finally:
        loop.checkpoint = real
    train(b, resume=True)
    wa = load_file(str(tmp_path / "a/run/checkpoints/step_000006/model.safetensors"))
    wb = load_file(str(tmp_path / "b/run/checkpoints/step_000006/model.safetensors"))
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    la = [r["loss/sft"] for r in _rows(tmp_path / "a/run")]
    lb = [r["loss/sft"] for r in _rows(tmp_path / "b/run")]
    assert la == lb and len(la) == 6


def test_prompt_tokens_are_masked_and_the_response_is_completion_then_eos(tmp_path, sft_file):
    """The loss is the mean NLL of completion + EOS tokens only, computed here with an explicit loop over
    the whole sequence in float64 (the prompt as the environment encodes it)."""
    from transformers import AutoTokenizer

    from rlreason.models import resolve_model
    from rlreason.registry import build_environment
    from rlreason.trainer.sft import sft_row
    tok = AutoTokenizer.from_pretrained(resolve_model("tiny-random", dtype="fp32"))
    env = build_environment("single_turn", tok, {}, None)
    row = sft_row(env, CHAT, "5. \\boxed{5}", 0)
    assert row.prompt_ids == env.encode_prompt(CHAT)
    assert row.response_ids == tok("5. \\boxed{5}", add_special_tokens=False).input_ids + [tok.eos_token_id]
    assert row.response_mask == [1] * len(row.response_ids)

    c = cfg(tmp_path, sft_file, "sft.batch_size=1", "trainer.max_grad_norm=null")
    from rlreason.trainer import loop
    run = loop.setup(c)
    batch_row = run.algorithm.rows[run.sampler._order[0]]
    ids = torch.tensor([batch_row.prompt_ids + batch_row.response_ids])
    with torch.no_grad():
        logp = torch.log_softmax(run.ctx.model(ids).logits[0].double(), -1)
    P = len(batch_row.prompt_ids)
    nll = [-float(logp[P + t - 1, tok_id]) for t, tok_id in enumerate(batch_row.response_ids)]
    m = run.algorithm.step(run).metrics
    assert m["loss/sft"] == pytest.approx(sum(nll) / len(nll), rel=1e-4)


def test_sft_jsonl_bad_lines_name_the_file_and_line(tmp_path):
    cases = [("not json", "invalid JSON"), ({"completion": "x"}, "missing key 'prompt'"),
             ({"prompt": "q"}, "missing key 'completion'"), ({"prompt": 3, "completion": "x"}, "'prompt' must be"),
             ({"prompt": "q", "completion": ""}, "non-empty string")]
    for i, (line, msg) in enumerate(cases):
        f = _write(tmp_path / f"bad{i}.jsonl", [{"prompt": "ok", "completion": "fine"}, line])
        with pytest.raises(DataError) as e:
            build_dataset({"source": "sft_jsonl", "path": str(f)}, key="data.train")
        assert f"{f}, line 2" in str(e.value) and msg in str(e.value) and "\n" not in str(e.value)
    ds = build_dataset({"source": "sft_jsonl", "path": str(_write(tmp_path / "r.jsonl", [
        {"prompt": "a", "response": "b"}]))}, key="data.train")
    assert ds[0]["completion"] == "b"  # the probe repair sets' spelling


def test_sft_refuses_rows_without_prompt_and_completion(tmp_path, sft_file):
    c = cfg(tmp_path, sft_file, "data.train={source: reasoning_gym, task: basic_arithmetic, size: 4}")
    with pytest.raises(ConfigError, match="data.train: algorithm=sft trains on rows with 'prompt' and 'completion'"):
        train(c)
    with pytest.raises(ConfigError, match="sft.batch_size"):
        train(cfg(tmp_path, sft_file, "sft.batch_size=0", "output_dir=" + str(tmp_path / "x")))
    with pytest.raises(ConfigError, match="set data.eval"):
        train(cfg(tmp_path, sft_file, "eval.every=1", "output_dir=" + str(tmp_path / "y")))


def test_token_id_lines_are_trained_verbatim_and_bad_ids_are_named(tmp_path):
    """Lines with prompt_ids / completion_ids (Delethink chunk lines) become rows with exactly those ids:
    no template, no EOS added; a line with one list and not the other, or a bad id, is refused naming it."""
    from rlreason.trainer.sft import ids_row

    f = _write(tmp_path / "ids.jsonl", [{"prompt": "a", "completion": "b"},
                                        {"id": "c2", "prompt": "x y", "completion": "z", "prompt_ids": [5, 6, 7],
                                         "completion_ids": [8, 9]}])
    ds = build_dataset({"source": "sft_jsonl", "path": str(f)}, key="data.train")
    assert ds[0]["prompt_ids"] == [] and ds[1]["prompt_ids"] == [5, 6, 7]
    row = ids_row(ds[1], 3, 100)
    assert (row.prompt_ids, row.response_ids, row.response_mask, row.trace_id) == ([5, 6, 7], [8, 9], [1, 1], 3)
    with pytest.raises(ConfigError, match="line 'c2': completion_ids has id 9, outside the model's vocabulary of 9"):
        ids_row(ds[1], 0, 9)
    cases = [({"prompt": "q", "completion": "x", "prompt_ids": [1]}, "'prompt_ids' without 'completion_ids'"),
             ({"prompt": "q", "completion": "x", "prompt_ids": [1], "completion_ids": []}, "'completion_ids' must be"),
             ({"prompt": "q", "completion": "x", "prompt_ids": [-1], "completion_ids": [2]}, "'prompt_ids' must be")]
    for i, (line, msg) in enumerate(cases):
        bad = _write(tmp_path / f"bad_ids{i}.jsonl", [{"prompt": "ok", "completion": "fine"}, line])
        with pytest.raises(DataError) as e:
            build_dataset({"source": "sft_jsonl", "path": str(bad)}, key="data.train")
        assert f"{bad}, line 2" in str(e.value) and msg in str(e.value)
