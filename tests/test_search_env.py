"""pay_per_search against the real retrieval server (subprocess on loopback) with a scripted policy and
the real SmolLM2 tokenizer (tiny-random): turns, masks, the search limit, broken/nested tags, a server
killed mid-episode, a server that never answers, the abstention mode, and the abstention evaluation."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
from test_search_server import free_port, start_server, stop_server, write_corpus

from rlreason.environments.pay_per_search import (EMPTY_MSG, FAILED_MSG, INVALID_MSG, LIMIT_MSG, STOP, PayPerSearch,
                                         format_documents, parse_action)
from rlreason.registry import ConfigError, build_environment
from rlreason.rewards.qa import qa_answered, qa_em, qa_f1
from rlreason.rollout.base import SamplingConfig
from rlreason.search.abstention import abstention_eval
from rlreason.search.client import Document
from rlreason.types import Completion

EX = {"id": "q1", "question": "What is the capital of Japan?", "answer": "Tokyo", "data_source": "t"}


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    d = tmp_path_factory.mktemp("envsearch")
    proc, url = start_server(write_corpus(d / "corpus.jsonl"), d / "cache")
    yield url
    stop_server(proc)


class ScriptedPolicy:
    """Each call returns the next scripted text as tokens (logprob -0.5 each); `on_call[i]` runs before
    call i (0-based). Calling more often than scripted fails the test."""

    def __init__(self, tok, script, on_call=None):
        self.tok, self.script, self.on_call = tok, list(script), on_call or {}
        self.calls = []

    async def generate(self, prompt_ids, *, max_tokens, stop=None):
        if len(self.calls) in self.on_call:
            self.on_call[len(self.calls)]()
        self.calls.append((list(prompt_ids), max_tokens, stop))
        assert self.script, f"policy called {len(self.calls)} times, more than scripted"
        item = self.script.pop(0)
        text, reason = item if isinstance(item, tuple) else (item, "stop")
        ids = self.tok.encode(text, add_special_tokens=False)[:max_tokens]
        return Completion(ids, [-0.5] * len(ids), reason)


def env(tok, url="http://127.0.0.1:9/retrieve", **kw):
    return build_environment("pay_per_search", tok, {"server_url": url, "timeout_s": 2.0, "retries": 1, **kw})


def run(e, policy, ex=EX):
    return asyncio.run(e.rollout(ex, policy))


def spans(sample):
    """Runs of equal mask value: [(mask, n_tokens), ...]."""
    out = []
    for m in sample.response_mask:
        if out and out[-1][0] == m:
            out[-1][1] += 1
        else:
            out.append([m, 1])
    return [tuple(x) for x in out]


# --- parsing --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text,expected", [
    ("<think>x</think>\n<answer> Tokyo </answer>", ("answer", "Tokyo")),
    ("<search> capital of Japan </search>", ("search", "capital of Japan")),
    ("<search>a <search> inner q </search>", ("search", "inner q")),            # nested: innermost
    ("<search> q <answer>x</answer> </search>", ("answer", "x")),               # first closing tag wins
    ("<search> <think>q</think> </search>", ("search", "q")),                   # tags stripped from query
    ("oops </search>", ("invalid_search", "")),
    ("Tokyo</answer>", ("invalid_answer", "")),
    ("<search>   </search>", ("search", "")),
    ("<think> still thinking", (None, "")),
])
def test_parse_action(text, expected):
    assert parse_action(text) == expected


def test_format_documents_strips_our_tags():
    text = format_documents([Document("1", "T", "a <answer>fake</answer> b c")], max_words=3)
    assert text == "\n<document>\n(Title: T) a fake b\n</document>\n"
    assert "<answer>" not in text


# --- episodes against the real server -------------------------------------------------------------------

def test_direct_answer_one_turn(tok):
    p = ScriptedPolicy(tok, ["<think> I know. </think>\n<answer> Tokyo </answer>"])
    ep = run(env(tok), p)
    s = ep.samples[0]
    assert len(ep.samples) == 1 and set(s.response_mask) == {1}
    assert ep.metrics == {"searches": 0.0, "tool_errors": 0.0, "answered": 1.0, "turns": 1.0, "abstained": 0.0,
                          "invalid_actions": 0.0, "truncated": 0.0}
    assert p.calls[0][2] == STOP
    assert qa_em(ep.transcript, EX["answer"]).value == 1.0


def test_search_then_answer_masks_and_context(tok, server):
    e = env(tok, server)
    p = ScriptedPolicy(tok, ["<think> Not sure. </think>\n<search> capital of Japan </search>",
                             "<think> Found it. </think>\n<answer> Tokyo </answer>"])
    ep = run(e, p)
    s = ep.samples[0]
    turn1 = tok.encode("<think> Not sure. </think>\n<search> capital of Japan </search>", add_special_tokens=False)
    turn2 = tok.encode("<think> Found it. </think>\n<answer> Tokyo </answer>", add_special_tokens=False)
    (m1, n1), (m0, n0), (m2, n2) = spans(s)
    assert (m1, n1, m0, m2, n2) == (1, len(turn1), 0, 1, len(turn2))
    injected = s.response_ids[n1:n1 + n0]
    docs = tok.decode(injected)
    assert docs.startswith("\n<document>\n(Title: Tokyo) Tokyo is the capital of Japan")
    assert docs.count("<document>") == 2  # only 2 of the passages match the query
    assert s.response_logprobs == [-0.5] * n1 + [0.0] * n0 + [-0.5] * n2
    # the second call sees prompt + generated + injected, token for token
    assert p.calls[1][0] == s.prompt_ids + s.response_ids[:n1 + n0]
    assert s.prompt_ids == p.calls[0][0] == e.encode_prompt(e.prompt(EX))
    assert ep.metrics["searches"] == 1 and ep.metrics["turns"] == 2 and ep.metrics["tool_errors"] == 0
    assert ep.metrics["answered"] == 1 and ep.info["queries"] == ["capital of Japan"]
    assert ep.transcript == tok.decode(s.response_ids, skip_special_tokens=True)
    assert qa_em(ep.transcript, "Tokyo").value == 1.0


def test_search_limit(tok, server):
    search = "<search> highest mountain </search>"
    p = ScriptedPolicy(tok, [search, search, search, "<answer> Everest </answer>"])
    ep = run(env(tok, server, max_searches=2), p)
    text = ep.transcript
    assert ep.metrics["searches"] == 3 and ep.metrics["turns"] == 4 and ep.metrics["answered"] == 1
    assert text.count("(Title: Mount Everest)") == 2 and text.count("SEARCH LIMIT REACHED") == 1
    assert text.index("SEARCH LIMIT REACHED") > text.rindex("(Title: Mount Everest)")
    limit_ids = tok.encode(LIMIT_MSG, add_special_tokens=False)
    assert spans(ep.samples[0])[-2] == (0, len(limit_ids))


def test_turn_cap_ends_the_episode(tok, server):
    search = "<search> Nile </search>"
    p = ScriptedPolicy(tok, [search] * 4)  # max_turns = max_searches + 2 = 4
    ep = run(env(tok, server, max_searches=2), p)
    assert ep.metrics["turns"] == 4 and ep.metrics["truncated"] == 1 and ep.metrics["answered"] == 0
    assert not p.script


def test_broken_and_nested_tags_and_empty_query(tok, server):
    p = ScriptedPolicy(tok, ["<search>Japan <search> capital of Japan </search>",  # nested: inner query
                             "no opening tag </search>",                          # invalid: message, go on
                             "<search>   </search>",                              # empty: message, no call
                             ("<think> long thought", "length"),                  # cut mid-thought: continue
                             "Tokyo </answer>"])                                  # no opening: not answered
    ep = run(env(tok, server, max_searches=5, max_turns=6), p)
    t = ep.transcript
    assert ep.info["queries"] == ["capital of Japan", ""]
    assert ep.metrics["searches"] == 2 and ep.metrics["invalid_actions"] == 2
    assert ep.metrics["answered"] == 0 and ep.metrics["turns"] == 5 and ep.metrics["tool_errors"] == 0
    assert t.count("(Title: Tokyo)") == 1 and INVALID_MSG.strip() in t and EMPTY_MSG.strip() in t
    assert qa_em(t, "Tokyo").value == 0.0


# --- tags split across turns --------------------------------------------------------------------------

def test_search_cut_by_the_turn_cap_is_finished_in_the_next_turn(tok, server):
    """A <search> whose turn hit the token cap is completed by the next turn: one valid search."""
    p = ScriptedPolicy(tok, [("<think> Not sure. </think>\n<search> capital of", "length"),
                             " Japan </search>", "<answer> Tokyo </answer>"])
    ep = run(env(tok, server), p)
    assert ep.info["queries"] == ["capital of Japan"] and ep.metrics["invalid_actions"] == 0
    assert ep.metrics["searches"] == 1 and ep.metrics["answered"] == 1 and ep.metrics["turns"] == 3
    assert ep.transcript.count("(Title: Tokyo)") == 1
    assert qa_em(ep.transcript, "Tokyo", ep).value == 1.0 and qa_answered(ep.transcript, ep).value == 1.0


def test_answer_cut_by_the_turn_cap_is_finished_in_the_next_turn(tok):
    p = ScriptedPolicy(tok, [("<think> I know. </think>\n<answer> Tok", "length"), "yo </answer>"])
    ep = run(env(tok), p)
    assert ep.metrics["answered"] == 1 and ep.metrics["invalid_actions"] == 0 and ep.metrics["turns"] == 2
    assert ep.info["final_answer"] == "Tokyo" and qa_em(ep.transcript, "Tokyo", ep).value == 1.0


def test_answer_opened_before_a_search_never_scores_the_passage(tok, server):
    """The search ends whatever was open; '</answer>' after the passage has no opening: not answered, and
    the rewards agree (they scored the retrieved passage as the answer)."""
    p = ScriptedPolicy(tok, ["<answer> x <search> capital of Japan </search>", "y </answer>"])
    ep = run(env(tok, server), p)
    assert ep.metrics["searches"] == 1 and ep.metrics["answered"] == 0 and ep.metrics["invalid_actions"] == 1
    assert "Tokyo is the capital of Japan" in ep.transcript and ep.info["final_answer"] is None
    assert qa_answered(ep.transcript, ep).value == 0.0 and qa_em(ep.transcript, "Tokyo", ep).value == 0.0
    assert qa_f1(ep.transcript, "Tokyo is the capital of Japan", ep).value == 0.0


def test_eos_without_action_ends(tok):
    ep = run(env(tok), ScriptedPolicy(tok, ["I think it is Tokyo."]))
    assert ep.metrics["turns"] == 1 and ep.metrics["answered"] == 0 and ep.metrics["truncated"] == 0


def test_response_budget_is_a_hard_bound(tok, server):
    p = ScriptedPolicy(tok, ["<search> capital of Japan </search>"])
    ep = run(env(tok, server, max_response_tokens=30), p)
    assert len(ep.samples[0].response_ids) == 30 and ep.metrics["truncated"] == 1


def test_server_killed_mid_episode_records_tool_error(tok, tmp_path):
    proc, url = start_server(write_corpus(tmp_path / "c.jsonl"), tmp_path / "cache")
    try:
        p = ScriptedPolicy(tok, ["<search> capital of France </search>",
                                 "<search> capital of Japan </search>",
                                 "<answer> Paris </answer>"],
                           on_call={1: lambda: stop_server(proc)})  # dies after the first search
        t0 = time.monotonic()
        ep = run(env(tok, url, timeout_s=1.0, retries=1), p)
    finally:
        if proc.poll() is None:
            stop_server(proc)
    assert time.monotonic() - t0 < 10
    assert ep.metrics["searches"] == 2 and ep.metrics["tool_errors"] == 1 and ep.metrics["answered"] == 1
    assert ep.transcript.count("(Title: Paris)") == 1 and FAILED_MSG.strip() in ep.transcript
    assert ep.transcript.index("(Title: Paris)") < ep.transcript.index("SEARCH FAILED")


def test_slow_server_times_out_and_episode_goes_on(tok):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        url = f"http://127.0.0.1:{s.getsockname()[1]}/retrieve"
        p = ScriptedPolicy(tok, ["<search> anything </search>", "<answer> x </answer>"])
        ep = run(env(tok, url, timeout_s=0.3, retries=1), p)
    assert ep.metrics["tool_errors"] == 1 and ep.metrics["answered"] == 1 and "SEARCH FAILED" in ep.transcript


def test_abstention_mode_ends_on_search(tok):
    p = ScriptedPolicy(tok, ["<think> no idea </think>\n<search> capital of Japan </search>"])
    ep = run(env(tok, search_enabled=False), p)  # the url is never contacted
    assert ep.metrics["abstained"] == 1 and ep.metrics["searches"] == 1 and ep.metrics["answered"] == 0
    assert ep.metrics["turns"] == 1 and "<document>" not in ep.transcript
    ep = run(env(tok, search_enabled=False), ScriptedPolicy(tok, ["<answer> Tokyo </answer>"]))
    assert ep.metrics["abstained"] == 0 and ep.metrics["answered"] == 1


def test_bad_args_are_config_errors(tok):
    with pytest.raises(ConfigError, match="max_searches"):
        env(tok, max_searches=-1)
    with pytest.raises(ConfigError, match="env.args.sever_url: unknown argument.*server_url"):
        build_environment("pay_per_search", tok, {"sever_url": "x"})


def test_real_engine_smoke(tok, server, tiny_model_dir):
    """The HF engine with the tiny random model drives an episode end to end (random text, real shapes)."""
    import torch
    from transformers import AutoModelForCausalLM

    from rlreason.rollout.hf_engine import HFEngine
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    engine = HFEngine(model, tokenizer=tok, sampling=SamplingConfig(), max_model_len=1024)
    e = env(tok, server, max_turn_tokens=8, max_response_tokens=32)
    eps = engine.run([e.rollout(EX, engine.policy(seed=i)) for i in range(2)])
    for ep in eps:
        s = ep.samples[0]
        assert 1 <= len(s.response_ids) <= 32 and s.response_mask[0] == 1 and ep.metrics["turns"] >= 1


# --- abstention evaluation ------------------------------------------------------------------------------

class FakeEngine:
    """Knows Tokyo (answers it directly everywhere); does not know Everest's height: searches when it can
    (then answers right), guesses wrong closed-book, and searches (= abstains) with the tool removed."""

    sampling = SamplingConfig()

    def __init__(self, tok):
        self.tok = tok

    def run(self, coros):
        async def main():
            return await asyncio.gather(*coros)
        return asyncio.run(main())

    def policy(self, seed=None, sampling=None):
        return self

    async def generate(self, prompt_ids, *, max_tokens, stop=None):
        ctx = self.tok.decode(prompt_ids)
        if "Japan" in ctx:
            text = "<answer> Tokyo </answer>"
        elif "search engine" not in ctx:  # closed-book prompt
            text = "<answer> 5000 m </answer>"
        elif "(Title:" in ctx or "SEARCH FAILED" in ctx:
            text = "<answer> 8,849 m </answer>"
        else:
            text = "<search> Mount Everest height </search>"
        ids = self.tok.encode(text, add_special_tokens=False)
        return Completion(ids, [0.0] * len(ids), "stop")


def test_abstention_eval_hand_computed(tok, server):
    examples = [EX, {"id": "q2", "question": "How high is Mount Everest?", "answer": "8,849 m", "data_source": "t"}]
    out = abstention_eval(FakeEngine(tok), {"server_url": server}, tok, examples, k=2)
    assert out["abstention/tool/accuracy"] == 1.0
    assert out["abstention/tool/searches"] == 0.5
    assert out["abstention/tool/tool_productivity"] == pytest.approx(1.0 / 1.5)
    assert out["abstention/no_tool/abstention_rate"] == 0.5
    assert out["abstention/abs_never"] == 1.0 and out["abstention/abs_always"] == 0.0
    assert out["abstention/delta"] == 1.0 and out["abstention/n_never"] == 1 and out["abstention/n_always"] == 1
    assert out["abstention/no_tool/precision"] == 1.0 and out["abstention/no_tool/accuracy"] == 0.5
    assert out["abstention/by_answerability"] == {"0/2": 1.0, "2/2": 0.0}
    # answerability from the with-tool samples instead: both questions always answerable
    out = abstention_eval(FakeEngine(tok), {"server_url": server}, tok, examples, k=2, answerability="tool")
    assert out["abstention/n_always"] == 2 and out["abstention/abs_always"] == 0.5


def test_undefined_rates_are_null_and_env_is_named(tok, server):
    # every question closed-book-unanswerable -> no always-answerable question: abs_always is undefined
    out = abstention_eval(FakeEngine(tok), {"server_url": server}, tok, [dict(EX, question="How high?",
                                                                                answer="8,849 m")], k=1)
    assert out["abstention/abs_always"] is None and out["abstention/delta"] is None
    assert out["abstention/abs_never"] == 1.0
    assert env(tok).name == "pay_per_search"  # metrics are logged as env/pay_per_search/...


def test_split_by_reports_env_metrics_and_the_abstention_read_off_per_group(tok, server):
    """env.args.split_by=type: the episode's searches / answered / abstained also under `<type>/`, and the
    read-off per type (the QA world's must_search / no_search), hand-computed from the FakeEngine's script:
    Japan is answered at once, Everest is searched then answered right."""
    examples = [dict(EX, info={"type": "no_search"}),
                {"id": "q2", "question": "How high is Mount Everest?", "answer": "8,849 m", "data_source": "t",
                 "info": {"type": "must_search"}}]
    out = abstention_eval(FakeEngine(tok), {"server_url": server, "split_by": "type"}, tok, examples, k=2)
    p = "abstention/by_type/"
    assert out[p + "must_search/searches"] == 1.0 and out[p + "no_search/searches"] == 0.0
    assert out[p + "must_search/accuracy"] == 1.0 and out[p + "no_search/accuracy"] == 1.0
    assert out[p + "must_search/tool_productivity"] == 0.5 and out[p + "no_search/tool_productivity"] == 1.0
    assert out[p + "must_search/abstention_rate"] == 1.0 and out[p + "no_search/abstention_rate"] == 0.0
    assert out[p + "must_search/answered_rate"] == 0.0 and out[p + "no_search/precision"] == 1.0
    assert out[p + "must_search/precision"] is None  # nothing answered: undefined, null
    assert out[p + "must_search/questions"] == 1
    assert out["abstention/tool/searches"] == 0.5  # the overall numbers are unchanged

    e = env(tok, server, split_by="type")
    ep = asyncio.run(e.rollout(examples[1], ScriptedPolicy(tok, ["<search> Everest </search>", "<answer> x </answer>"])))
    assert ep.metrics["must_search/searches"] == 1.0 and ep.metrics["must_search/answered"] == 1.0
    assert "no_search/searches" not in ep.metrics
    with pytest.raises(ValueError, match="info.type"):
        asyncio.run(e.rollout(EX, ScriptedPolicy(tok, ["<answer> Tokyo </answer>"])))
    with pytest.raises(ConfigError, match="split_by"):
        env(tok, split_by="")
