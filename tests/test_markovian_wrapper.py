"""Delethink as a wrapper around any environment (`env.markovian`, rlreason/delethink.py).

Composed with single_turn, pay_per_search (a fake search client) and a two-turn environment defined
here, against scripted policies: chunk prompts token by token, masks (injected text never in a trained
response), one trace per episode, stop strings split across a chunk boundary, config errors; then the
real HF engine on the tiny model (each chunk's logprobs equal a forward pass of its own prompt)."""

from __future__ import annotations

import asyncio

import pytest
import torch
from test_markovian import FOUR_CHUNKS, SMALL, FakeTokenizer, ScriptedPolicy

from rlreason.algos.losses import token_weights
from rlreason.config import load_config
from rlreason.delethink import DelethinkPolicy, Markovian, boundary_stop
from rlreason.environments.markovian import MarkovianThinking
from rlreason.registry import ENVIRONMENTS, ConfigError, build_environment
from rlreason.trainer.batch import episodes_to_rows
from rlreason.types import Completion, Environment, Episode, RowBound, Sample

DELETHINK = {"chunk_size": 8, "carryover": 5, "keep_head": 2}  # carry 3, later chunks write 3
FEEDBACK = [7, 7]  # what the two-turn environment injects between its turns


class TwoTurn(Environment):
    """Answer, get feedback, answer again, in one growing context (as a tool environment does). Its own
    Sample masks the feedback (mask 0), as every multi-turn environment must."""

    def __init__(self, tokenizer, *, max_tokens: int = 4, rebuild: bool = False) -> None:
        super().__init__(tokenizer)
        self.max_tokens, self.rebuild = max_tokens, rebuild

    async def rollout(self, example: dict, policy) -> Episode:
        q = self.encode(example["question"])
        a = await policy.generate(q, max_tokens=self.max_tokens)
        # rebuild=True: turn 2 is a new prompt (the feedback and the first answer's last token only)
        ctx = (FEEDBACK + a.token_ids[-1:]) if self.rebuild else q + a.token_ids + FEEDBACK
        b = await policy.generate(ctx, max_tokens=self.max_tokens)
        ids = a.token_ids + FEEDBACK + b.token_ids
        mask = [1] * len(a.token_ids) + [0] * len(FEEDBACK) + [1] * len(b.token_ids)
        lps = a.logprobs + [0.0] * len(FEEDBACK) + b.logprobs
        return Episode([Sample(q, ids, lps, mask)], transcript=self.decode(ids), metrics={"turns": 2.0})


EXAMPLE = {"question": "1 2 3", "answer": "42"}


def run(env, script, example=EXAMPLE):
    policy = ScriptedPolicy(script)
    return asyncio.run(env.rollout(example, policy)), policy


def wrapped(name, args=None, **delethink):
    return build_environment(name, FakeTokenizer(), dict(args or {}), {**DELETHINK, **delethink})


# ---- single_turn: the same chunks as the `markovian` environment -----------------------------------------

def test_single_turn_in_the_wrapper_is_markovian_chunk_for_chunk():
    args = {"template": "{question}", "style": "raw"}
    env = wrapped("single_turn", args, max_chunks=4)
    assert isinstance(env, Markovian) and env.name == "single_turn" and env.budget() == 17
    ep, policy = run(env, FOUR_CHUNKS)
    ref, ref_policy = run(MarkovianThinking(FakeTokenizer(), max_chunks=4, **SMALL), FOUR_CHUNKS)
    assert policy.calls == ref_policy.calls  # prompts, max_tokens [8, 3, 3, 3], stop
    assert policy.prompts[1] == [1, 2, 3, 101, 102, 106, 107, 108]
    assert [(s.prompt_ids, s.response_ids, s.response_logprobs, s.response_mask) for s in ep.samples] == \
        [(s.prompt_ids, s.response_ids, s.response_logprobs, s.response_mask) for s in ref.samples]
    assert {k: ep.metrics[k] for k in ref.metrics} == ref.metrics  # chunks, thinking_tokens, ended_by_eos
    assert ep.metrics["response_tokens"] == 16  # single_turn's own metric, over the whole trace
    # single_turn reads the whole trace (every chunk); `markovian` reads the last chunk's state
    assert ep.transcript == FakeTokenizer().decode([t for s in ep.samples for t in s.response_ids])
    assert ref.transcript == "<301><302><303><401><402><403>"


def test_env_max_tokens_is_replaced_by_the_delethink_budget():
    env = wrapped("single_turn", {"template": "{question}", "style": "raw", "max_tokens": 2}, max_chunks=2)
    _, policy = run(env, FOUR_CHUNKS[:2])
    assert policy.max_tokens == [8, 3]


# ---- a two-turn environment: injected text is shown, never trained ---------------------------------------

def test_two_turns_chunk_prompts_masks_and_one_trace():
    env = wrapped("two_turn_test", max_chunks=2)
    script = [(list(range(101, 109)), "length"), ([201, 202], "stop"),  # turn 1: two chunks, EOS
              ([301, 302, 303], "length"), ([401], "stop")]              # turn 2: two chunks
    ep, policy = run(env, script)
    head, q = [101, 102], [1, 2, 3]
    assert policy.prompts == [
        q,                                        # turn 1, chunk 1: the query
        q + head + [106, 107, 108],               # turn 1, chunk 2: head + carry
        q + head + [108, 201, 202] + FEEDBACK,    # turn 2: the m-token state, then the feedback, whole
        q + head + [7, 7, 301, 302, 303][-3:],    # the feedback rolls out of the carry like any text
    ]
    assert policy.max_tokens == [8, 3, 3, 3]  # the query's first chunk writes C, every later one C - m
    assert [s.response_ids for s in ep.samples] == [list(range(101, 109)), [201, 202], [301, 302, 303], [401]]
    assert all(s.response_mask == [1] * len(s.response_ids) for s in ep.samples)
    assert ep.samples[1].response_logprobs == [-0.201, -0.202]
    trained = [t for s in ep.samples for t, m in zip(s.response_ids, s.response_mask) if m]
    assert 7 not in trained and ep.num_trained_tokens == 14  # every generated token, no injected one
    assert ep.metrics == {"turns": 2.0, "chunks": 4.0, "thinking_tokens": 14.0, "ended_by_eos": 1.0}
    # the environment saw each turn's whole trace
    assert ep.transcript == FakeTokenizer().decode(list(range(101, 109)) + [201, 202] + FEEDBACK +
                                                   [301, 302, 303, 401])


def test_two_turns_unwrapped_masks_the_feedback():
    env = build_environment("two_turn_test", FakeTokenizer(), {"max_tokens": 3})
    ep, _ = run(env, [([101, 102], "stop"), ([201], "stop")])
    assert ep.samples[0].response_mask == [1, 1, 0, 0, 1]


def test_a_rebuilt_prompt_starts_a_new_query_in_the_same_trace():
    env = wrapped("two_turn_test", {"rebuild": True}, max_chunks=2)
    script = [(list(range(101, 109)), "length"), ([201], "stop"), (list(range(301, 309)), "length"),
              ([401], "stop")]
    ep, policy = run(env, script)
    q2 = FEEDBACK + [201]
    assert policy.prompts[2:] == [q2, q2 + [301, 302] + [306, 307, 308]]  # its own head and carry
    assert policy.max_tokens == [8, 3, 8, 3]
    assert len(ep.samples) == 4


def test_every_chunk_of_every_turn_is_one_trace():
    env = wrapped("two_turn_test", max_chunks=2)
    script = [(list(range(101, 109)), "length"), ([201, 202], "stop"), ([301, 302, 303], "length"), ([401], "stop")]
    ep_a, _ = run(env, script)                                     # 4 chunks, l = 14
    ep_b, _ = run(env, [([101, 102], "stop"), ([201], "stop")])    # 2 chunks, l = 3
    rows = episodes_to_rows([ep_a, ep_b], [0.5, -0.5], [0, 0])
    assert [r.trace_id for r in rows] == [0, 0, 0, 0, 1, 1]
    assert [r.advantage for r in rows] == [0.5] * 4 + [-0.5] * 2  # one advantage per trace
    T = max(len(r.response_ids) for r in rows)
    mask = torch.zeros(len(rows), T, dtype=torch.float64)
    for i, r in enumerate(rows):
        mask[i, :len(r.response_ids)] = torch.tensor(r.response_mask, dtype=torch.float64)
    w = token_weights(mask, "trace-length-norm", trace_ids=torch.tensor([r.trace_id for r in rows]))
    for i, r in enumerate(rows):  # Eq. 3: 1 / (G l_g) on every token of every chunk, G = 2
        l_g = (14, 3)[r.trace_id]
        assert w[i, :len(r.response_ids)].tolist() == pytest.approx([1 / (2 * l_g)] * len(r.response_ids))


# ---- stop strings split across a chunk boundary ------------------------------------------------------------

class CharTokenizer:
    """One token per character (id = code point), so a test can put a boundary anywhere in a word."""

    bos_token_id = None

    def encode(self, text, add_special_tokens=False):
        return [ord(c) for c in text]

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids)


def chars(text):
    return [ord(c) for c in text]


class TextPolicy(ScriptedPolicy):
    """ScriptedPolicy scripted in text; asserts the stop strings reach every chunk."""

    def __init__(self, script, stop):
        super().__init__([(chars(t), r) for t, r in script])
        self.stop = stop

    async def generate(self, prompt_ids, *, max_tokens, stop=None):
        assert stop == self.stop
        return await super().generate(prompt_ids, max_tokens=max_tokens, stop=stop)


class StopEnv(Environment):
    """One generation with stop strings; optionally a second call continuing the same context."""

    def __init__(self, tokenizer, *, continue_once: bool = False) -> None:
        super().__init__(tokenizer)
        self.continue_once = continue_once

    async def rollout(self, example: dict, policy) -> Episode:
        q = self.encode(example["question"])
        out = await policy.generate(q, max_tokens=50, stop=["</answer>", "</search>"])
        ids = out.token_ids
        if self.continue_once and out.finish_reason == "length":
            out = await policy.generate(q + ids, max_tokens=50, stop=["</answer>", "</search>"])
            ids = ids + out.token_ids
        return Episode([Sample(q, ids, [0.0] * len(ids), [1] * len(ids))], transcript=self.decode(ids),
                       info={"finish": out.finish_reason})


@pytest.fixture(autouse=True)
def test_environments(registered):
    """The two test environments, registered as a user's package would be, for each test only."""
    registered(ENVIRONMENTS, {"two_turn_test": TwoTurn, "stop_test": StopEnv})


def stop_env(**kw):
    return build_environment("stop_test", CharTokenizer(), kw, {"chunk_size": 16, "carryover": 5, "keep_head": 2,
                                                                 "max_chunks": 3})


def test_stop_string_split_across_chunks_is_found():
    policy = TextPolicy([("I think<", "length"), ("/answer> an", "length")], ["</answer>", "</search>"])
    ep = asyncio.run(stop_env().rollout({"question": "Q?"}, policy))
    assert len(policy.calls) == 2  # a third chunk would fail inside the scripted policy
    assert ep.transcript == "I think</answer>" and ep.info["finish"] == "stop"
    assert ep.samples[1].response_ids == chars("/answer>")  # cut right after the stop string, logprobs too
    assert ep.samples[1].response_logprobs == [-i / 1000 for i in chars("/answer>")]
    assert ep.metrics["ended_by_eos"] == 1.0 and ep.metrics["thinking_tokens"] == 16


def test_stop_string_split_across_two_calls_is_found():
    # the first call uses its 2 chunks and ends mid-tag; the environment continues with nothing injected
    env = build_environment("stop_test", CharTokenizer(), {"continue_once": True},
                            {"chunk_size": 12, "carryover": 5, "keep_head": 2, "max_chunks": 2})
    policy = TextPolicy([("abcdefghijkl", "length"), ("mn</", "length"), ("search>", "length")],
                        ["</answer>", "</search>"])
    ep = asyncio.run(env.rollout({"question": "Q?"}, policy))
    assert ep.transcript == "abcdefghijklmn</search>" and ep.info["finish"] == "stop"
    assert policy.prompts[2] == chars("Q?") + chars("ab") + chars("n</")  # continued: head + carry
    assert ep.metrics["ended_by_eos"] == 1.0


@pytest.mark.parametrize("first, second", [("x</answer>", "d> more"),   # complete before the boundary
                                           ("x</answe", "d> more")])    # begun, never completed
def test_no_false_stop_from_text_before_the_boundary(first, second):
    policy = TextPolicy([(first, "length"), (second, "length"), ("end", "stop")], ["</answer>", "</search>"])
    ep = asyncio.run(stop_env().rollout({"question": "Q?"}, policy))
    assert ep.transcript == first + second + "end" and len(ep.samples) == 3


def test_boundary_stop_unit():
    dec = CharTokenizer().decode
    assert boundary_stop(dec, chars("ab</ans"), chars("wer>cd"), ["</answer>"]) == 4
    assert boundary_stop(dec, chars("ab</answer>"), chars("cd"), ["</answer>"]) is None  # ended before
    assert boundary_stop(dec, chars("ab<"), chars("/search>"), ["</answer>", "</search>"]) == 8
    assert boundary_stop(dec, [], chars("</answer>"), ["</answer>"]) is None  # nothing generated before
    assert boundary_stop(dec, chars("ab</ans"), chars("wer>"), None) is None
    assert boundary_stop(dec, chars("<"), chars("x" * 40 + "/answer>"), ["</answer>"]) is None


def test_a_stop_string_begun_by_injected_text_does_not_count():
    """Text the environment injected is not the policy's: a stop string it starts is not the policy's stop."""
    trace = DelethinkPolicy(ScriptedPolicy([(chars("x</an"), "length"), (chars("swer> go"), "stop")]),
                            CharTokenizer().decode, chunk_size=20, carryover=5, keep_head=2, max_chunks=1)
    first = asyncio.run(trace.generate(chars("Q"), max_tokens=9, stop=["</answer>"]))
    assert first.finish_reason == "length"
    second = asyncio.run(trace.generate(chars("Q") + first.token_ids + chars("Z"), max_tokens=9,
                                        stop=["</answer>"]))
    assert second.token_ids == chars("swer> go")  # "</an" + "swer>" with "Z" between is no stop string


# ---- pay_per_search, with a fake search client ----------------------------------------------------------

@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def search_env(tok, args, markovian):
    from rlreason.search.client import Document, SearchResult
    env = build_environment("pay_per_search", tok, {"server_url": "http://127.0.0.1:9/retrieve", **args}, markovian)
    queries = []

    async def fake_search(query: str) -> SearchResult:
        queries.append(query)
        return SearchResult(docs=[Document("1", "Tokyo", "Tokyo is the capital of Japan.")])
    env.client.search = fake_search  # the wrapper hands attribute access to pay_per_search
    return env, queries


def test_pay_per_search_from_a_config_file(tmp_path, tok):
    from rlreason.environments.pay_per_search import STOP, format_documents
    from rlreason.search.client import Document
    (tmp_path / "c.yaml").write_text(
        "env:\n  name: pay_per_search\n  args: {max_searches: 2}\n"
        "  markovian: {chunk_size: 32, carryover: 16, keep_head: 4, max_chunks: 3}\n")
    cfg = load_config(str(tmp_path / "c.yaml"))
    env, queries = search_env(tok, cfg.env.args, cfg.env.markovian)
    assert isinstance(env, Markovian) and env.max_searches == 2
    enc = lambda s: tok.encode(s, add_special_tokens=False)  # noqa: E731
    y1 = enc("<think> I do not know it. </think> <search> capital of Japan </se")
    y2 = enc("arch> and then some words that should be cut")
    y3 = enc("<answer> Tokyo </answer>")
    assert len(y1) <= 32 and len(y2) <= 16
    policy = ScriptedPolicy([(y1, "length"), (y2, "length"), (y3, "stop")])
    ep = asyncio.run(env.rollout({"question": "What is the capital of Japan?", "answer": "Tokyo"}, policy))

    assert queries == ["capital of Japan"]  # the split </search> ended the turn
    cut = len(enc("arch>"))
    assert tok.decode(y1 + y2[:cut]).endswith("</search>")
    assert [s.response_ids for s in ep.samples] == [y1, y2[:cut], y3]
    docs = enc(format_documents([Document("1", "Tokyo", "Tokyo is the capital of Japan.")]))
    q = policy.prompts[0]
    carry = (y1[4:] + y2[:cut])[-12:]
    assert policy.prompts == [q, q + y1[:4] + y1[4:][-12:], q + y1[:4] + carry + docs]
    assert [c[2] for c in policy.calls] == [STOP] * 3
    assert all(s.response_mask == [1] * len(s.response_ids) for s in ep.samples)
    assert all(len(s.response_logprobs) == len(s.response_ids) for s in ep.samples)
    assert ep.num_trained_tokens == len(y1) + cut + len(y3)  # the documents are never trained
    assert ep.metrics["searches"] == 1.0 and ep.metrics["answered"] == 1.0 and ep.metrics["chunks"] == 3.0
    assert "<answer> Tokyo </answer>" in ep.transcript and "(Title: Tokyo)" in ep.transcript


# ---- configuration -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec, match", [
    ({"chunk": 8}, r"env\.markovian\.chunk: unknown key\. Allowed: chunk_size, carryover, keep_head, max_chunks"),
    ({"chunk_size": 8, "carryover": 5, "keep_head": 5}, r"env\.markovian\.keep_head:"),
    ({"chunk_size": 8, "carryover": 8, "keep_head": 2}, r"env\.markovian\.carryover:"),
    ({"max_chunks": 0}, r"env\.markovian\.max_chunks:"),
    ([8, 4], r"env\.markovian: expected a mapping"),
])
def test_bad_markovian_config_names_the_key(spec, match):
    with pytest.raises(ConfigError, match=match):
        build_environment("single_turn", FakeTokenizer(), {}, spec)


def test_markovian_cannot_be_wrapped_twice_and_defaults_are_the_papers():
    with pytest.raises(ConfigError, match=r"env\.markovian: environment 'markovian' already thinks"):
        build_environment("markovian", FakeTokenizer(), {}, {})
    env = build_environment("single_turn", FakeTokenizer(), {}, {})
    assert (env.C, env.m, env.keep_head, env.I, env.budget()) == (8192, 4096, 100, 5, 24576)
    assert load_config(None, []).env.markovian is None
    with pytest.raises(ConfigError, match=r"env\.markovian: expected a mapping"):
        load_config(None, ["env.markovian=5"])


def test_state_and_step_end_reach_the_inner_environment():
    class Counting(TwoTurn):
        def __init__(self, tokenizer):
            super().__init__(tokenizer)
            self.seen = []

        def on_step_end(self, stats):
            self.seen.append(stats)

        def state_dict(self):
            return {"n": len(self.seen)}

    inner = Counting(FakeTokenizer())
    env = Markovian(inner, **DELETHINK)
    env.on_step_end({"x": 1.0})
    assert inner.seen == [{"x": 1.0}] and env.state_dict() == {"n": 1}


def test_row_bound():
    mk = MarkovianThinking(FakeTokenizer(), max_chunks=3, **SMALL)
    assert mk.row_bound() == RowBound(prompt_extra=5, response=8)  # q + m-token state, one chunk
    assert wrapped("two_turn_test", max_chunks=2).row_bound() is None  # the inner environment declares none
    env = wrapped("single_turn", {"max_tokens": 4}, max_chunks=2)
    inner = env.inner.row_bound()
    assert env.row_bound() == RowBound(prompt_extra=5 + inner.prompt_extra + inner.response, response=8)


# ---- the real engine ---------------------------------------------------------------------------------------

def test_real_hf_engine_chunks_are_exact_rows(tiny_model_dir):
    """Through rlreason's HF engine on the tiny model: every chunk's logprobs are those of a forward pass
    over that chunk's own prompt, i.e. each Sample is exactly what the policy saw and wrote."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlreason.rollout import SamplingConfig, make_engine
    d = tiny_model_dir
    tk = AutoTokenizer.from_pretrained(d)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
    eng = make_engine("hf", model_dir=d, model=model, tokenizer=tk, sampling=SamplingConfig(temperature=1.0),
                      dtype="fp32", max_model_len=256, kv_cache_gb=1, gpu_memory_utilization=0.3,
                      enable_prefix_caching=True, seed=0)
    env = build_environment("two_turn_test", tk, {}, {"chunk_size": 12, "carryover": 6, "keep_head": 2,
                                                      "max_chunks": 3})
    ex = {"question": "What is 2 + 2?"}
    ep = eng.run([env.rollout(ex, eng.policy(seed=5))])[0]
    assert 2 <= len(ep.samples) <= 6
    q = tk.encode(ex["question"], add_special_tokens=False)
    for s in ep.samples:
        assert s.prompt_ids[:len(q)] == q and len(s.response_ids) <= 12
        with torch.no_grad():
            logits = model(torch.tensor([s.prompt_ids + s.response_ids])).logits[0, len(s.prompt_ids) - 1:-1]
        ref = torch.log_softmax(logits, -1).gather(-1, torch.tensor(s.response_ids)[:, None])[:, 0]
        assert torch.allclose(ref, torch.tensor(s.response_logprobs), atol=1e-4)
    assert ep.metrics["chunks"] == len(ep.samples)


@pytest.mark.slow
def test_real_vllm_engine_two_turns_chunk_rows(tiny_model_dir):
    """The production engine (vLLM) under the wrapper: a two-turn episode through `rlreason`'s vLLM policy,
    each chunk's prompt is query + head + carry (+ the feedback once), and its logprobs are the trainer's
    forward over that prompt (bf16 engine vs fp32 trainer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlreason.rollout import SamplingConfig, make_engine
    d = tiny_model_dir
    tk = AutoTokenizer.from_pretrained(d)
    eng = make_engine("vllm", model_dir=d, model=None, tokenizer=tk, sampling=SamplingConfig(1.0), dtype="bf16",
                      max_model_len=256, kv_cache_gb=1, gpu_memory_utilization=0.3, enable_prefix_caching=True, seed=0)
    try:
        env = build_environment("two_turn_test", tk, {}, {"chunk_size": 12, "carryover": 6, "keep_head": 2,
                                                          "max_chunks": 3})
        ex = {"question": "What is 2 + 2?"}
        episodes = eng.run([env.rollout(ex, eng.policy(seed=s)) for s in range(3)])
    finally:
        eng.close()
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
    q = tk.encode(ex["question"], add_special_tokens=False)
    for ep in episodes:
        assert 2 <= len(ep.samples) <= 6 and ep.metrics["chunks"] == len(ep.samples)
        head = ep.samples[0].response_ids[:2]
        assert ep.samples[0].prompt_ids == q and len(ep.samples[0].response_ids) <= 12  # C
        assert sum(s.prompt_ids[-len(FEEDBACK):] == FEEDBACK for s in ep.samples) == 1  # shown once
        for s in ep.samples[1:]:
            assert s.prompt_ids[:len(q) + 2] == q + head and len(s.response_ids) <= 12 - 6  # C - m
            assert len(s.prompt_ids) <= len(q) + 6 + len(FEEDBACK)  # the m-token state (+ the feedback)
            with torch.no_grad():
                logits = model(torch.tensor([s.prompt_ids + s.response_ids])).logits[0, len(s.prompt_ids) - 1:-1]
            ref = torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(s.response_ids)[:, None])[:, 0]
            assert (ref - torch.tensor(s.response_logprobs)).abs().mean() < 0.1


def test_overlapping_calls_of_one_episode_are_refused():
    class Parallel(Environment):
        async def rollout(self, example, policy):
            await asyncio.gather(policy.generate([1], max_tokens=4), policy.generate([2], max_tokens=4))

    class SlowPolicy:
        async def generate(self, prompt_ids, *, max_tokens, stop=None):
            await asyncio.sleep(0)
            return Completion([5], [-0.1], "stop")

    env = Markovian(Parallel(FakeTokenizer()), **DELETHINK)
    with pytest.raises(RuntimeError, match="one at a time"):
        asyncio.run(env.rollout({}, SlowPolicy()))


def test_abstention_eval_runs_the_wrapped_environment(tok):
    from rlreason.rollout.base import SamplingConfig
    from rlreason.search.abstention import abstention_eval

    class AnsweringEngine:
        sampling = SamplingConfig()

        def __init__(self):
            self.max_tokens = []

        def run(self, coros):
            async def main():
                return await asyncio.gather(*coros)
            return asyncio.run(main())

        def policy(self, seed=None, sampling=None):
            return self

        async def generate(self, prompt_ids, *, max_tokens, stop=None):
            self.max_tokens.append(max_tokens)
            ids = tok.encode("<answer> Tokyo </answer>", add_special_tokens=False)
            return Completion(ids, [0.0] * len(ids), "stop")

    eng = AnsweringEngine()
    ex = {"id": "q1", "question": "What is the capital of Japan?", "answer": "Tokyo", "data_source": "t"}
    out = abstention_eval(eng, {"server_url": "http://127.0.0.1:9/retrieve"}, tok, [ex], k=1,
                          markovian={"chunk_size": 32, "carryover": 16, "keep_head": 4, "max_chunks": 2})
    assert set(eng.max_tokens) == {32}  # each episode's first chunk, not pay_per_search's 512-token turn
    assert out["abstention/tool/accuracy"] == 1.0


def test_chunked_eval_refuses_env_markovian():
    from rlreason.markovian_eval import shared_env_args
    cfg = load_config(None, ["env.markovian.chunk_size=64"])
    with pytest.raises(ConfigError, match=r"env\.markovian: --chunked"):
        shared_env_args(cfg)
