"""Delethink (`markovian`) and its LongCoT baseline against a scripted policy.

Prompts are pinned token by token against hand-written lists (C = 8, m = 5, keep_head = 2, so the carry
is m - keep_head = 3 tokens and later chunks write C - m = 3). Token ids: the query is [1, 2, 3]; chunk l
writes ids in the l-hundreds (101.. for chunk 1, 201.. for chunk 2, ...)."""

from __future__ import annotations

import asyncio
import re

import pytest
import torch

from rlreason.algos.losses import token_weights
from rlreason.environments.longcot import LongCoT
from rlreason.environments.markovian import MarkovianThinking, delethink_budget
from rlreason.registry import ENVIRONMENTS, ConfigError, build_environment
from rlreason.types import Completion, Episode

Q = [1, 2, 3]
EXAMPLE = {"question": "1 2 3", "answer": "42"}
SMALL = dict(chunk_size=8, carryover=5, keep_head=2, template="{question}", style="raw")
BOX_OPEN, BOX_CLOSE, END_THINK, WRONG_BOX = 900, 901, 902, 903


class FakeTokenizer:
    """Ids are ints; `encode` reads space-separated integers, `decode` concatenates a word per id
    (a few ids spell an answer so reward tests can read text)."""

    WORDS = {BOX_OPEN: "\\boxed{", BOX_CLOSE: "42}", END_THINK: "</think>", WRONG_BOX: "\\boxed{7}"}

    def encode(self, text, add_special_tokens=False):
        return [int(w) for w in text.split()]

    def decode(self, ids, skip_special_tokens=True):
        return "".join(self.WORDS.get(i, f"<{i}>") for i in ids)


class ScriptedPolicy:
    """Returns the scripted (token_ids, finish_reason) per call, logprob of id i = -i/1000, and records
    every (prompt_ids, max_tokens, stop). Calling it more often than scripted fails the test."""

    def __init__(self, script):
        self.script = list(script)
        self.calls = []

    async def generate(self, prompt_ids, *, max_tokens, stop=None):
        self.calls.append((list(prompt_ids), max_tokens, stop))
        assert self.script, f"policy called {len(self.calls)} times, more than scripted"
        ids, reason = self.script.pop(0)
        assert len(ids) <= max_tokens, f"scripted {len(ids)} tokens but only {max_tokens} were allowed"
        return Completion(list(ids), [-i / 1000 for i in ids], reason)

    @property
    def prompts(self):
        return [c[0] for c in self.calls]

    @property
    def max_tokens(self):
        return [c[1] for c in self.calls]


def run(env, script, example=EXAMPLE):
    policy = ScriptedPolicy(script)
    episode = asyncio.run(env.rollout(example, policy))
    return episode, policy


def boxed_score(text: str, answer: str) -> float:
    """The colleague's math reward when present, else the last \\boxed{...} compared as a string."""
    try:
        from rlreason.rewards.math import math_reward
    except ImportError:  # rewards/math.py not written yet: a direct regex check
        found = re.findall(r"\\boxed\{([^{}]*)\}", text)
        return float(bool(found) and found[-1].strip() == answer)
    return float(math_reward(text, answer).value)


CHUNK1 = list(range(101, 109))  # 8 tokens = C, no EOS
FOUR_CHUNKS = [(CHUNK1, "length"), ([201, 202], "length"), ([301, 302, 303], "length"),
               ([401, 402, 403], "length")]


# ---- the chunking rule -----------------------------------------------------------------------------

def test_prompts_of_chunks_1_to_4_token_by_token():
    env = MarkovianThinking(FakeTokenizer(), max_chunks=4, **SMALL)
    ep, policy = run(env, FOUR_CHUNKS)
    assert policy.prompts == [
        [1, 2, 3],                               # chunk 1: the query
        [1, 2, 3, 101, 102, 106, 107, 108],      # head 101,102 + last 3 of what follows it
        [1, 2, 3, 101, 102, 108, 201, 202],      # chunk 2 wrote only 2: carry reaches into chunk 1
        [1, 2, 3, 101, 102, 301, 302, 303],      # a full chunk 3 fills the carry alone
    ]
    assert policy.max_tokens == [8, 3, 3, 3]     # C, then C - m
    assert [c[2] for c in policy.calls] == [None] * 4


def test_carry_never_repeats_head_when_chunk1_stops_early_without_eos():
    env = MarkovianThinking(FakeTokenizer(), max_chunks=2, **SMALL)
    _, policy = run(env, [([101, 102, 103, 104], "length"), ([201], "stop")])
    assert policy.prompts[1] == [1, 2, 3, 101, 102, 103, 104]  # = q + y_1, nothing doubled
    _, policy = run(env, [([101], "length"), ([201], "stop")])
    assert policy.prompts[1] == [1, 2, 3, 101]  # shorter than the head: all of it is head, no carry


def test_carry_when_later_chunks_are_longer_than_the_carry():
    # C = 10, m = 4, keep_head = 1: carry 3 tokens, later chunks write 6; the carry is the newest tail.
    env = MarkovianThinking(FakeTokenizer(), chunk_size=10, carryover=4, keep_head=1, max_chunks=3,
                            template="{question}", style="raw")
    _, policy = run(env, [(list(range(101, 111)), "length"), (list(range(201, 207)), "length"),
                          ([301], "stop")])
    assert policy.prompts == [[1, 2, 3], [1, 2, 3, 101, 108, 109, 110], [1, 2, 3, 101, 204, 205, 206]]
    assert policy.max_tokens == [10, 6, 6]


def test_eos_mid_chunk_stops_the_episode():
    env = MarkovianThinking(FakeTokenizer(), max_chunks=4, **SMALL)
    ep, policy = run(env, [(CHUNK1, "length"), ([201, 202], "stop")])  # EOS before the 3 allowed
    assert len(policy.calls) == 2  # a third call would fail inside ScriptedPolicy too
    assert ep.metrics == {"chunks": 2.0, "thinking_tokens": 10.0, "ended_by_eos": 1.0}

    ep, policy = run(env, [([101, 102, 103], "stop")])  # EOS in chunk 1
    assert len(policy.calls) == 1 and ep.metrics["chunks"] == 1.0 and ep.metrics["ended_by_eos"] == 1.0


@pytest.mark.parametrize("max_chunks", [1, 2, 3])
def test_iteration_cap(max_chunks):
    env = MarkovianThinking(FakeTokenizer(), max_chunks=max_chunks, **SMALL)
    ep, policy = run(env, FOUR_CHUNKS[:max_chunks])
    assert len(policy.calls) == max_chunks == len(ep.samples)
    assert ep.metrics["chunks"] == max_chunks and ep.metrics["ended_by_eos"] == 0.0
    assert ep.metrics["thinking_tokens"] == [8, 10, 13][max_chunks - 1]


def test_samples_one_per_chunk_with_own_prompt_response_logprobs():
    env = MarkovianThinking(FakeTokenizer(), max_chunks=4, **SMALL)
    ep, _ = run(env, FOUR_CHUNKS)
    assert [len(s.prompt_ids) for s in ep.samples] == [3, 8, 8, 8]
    assert [s.response_ids for s in ep.samples] == [CHUNK1, [201, 202], [301, 302, 303], [401, 402, 403]]
    assert [len(s.response_logprobs) for s in ep.samples] == [8, 2, 3, 3]
    assert ep.samples[1].response_logprobs == [-0.201, -0.202]
    assert all(s.response_mask == [1] * len(s.response_ids) for s in ep.samples)
    assert ep.samples[2].prompt_ids == [1, 2, 3, 101, 102, 108, 201, 202]
    assert ep.num_trained_tokens == 16


# ---- budget -----------------------------------------------------------------------------------------

def test_budget_formula():
    assert delethink_budget(8192, 4096, 5) == 24576       # the paper's 24K
    assert delethink_budget(8192, 4096, 23) == 98304      # the paper's 96K
    assert MarkovianThinking(FakeTokenizer(), max_chunks=4, **SMALL).budget() == 8 + 3 * 3
    assert MarkovianThinking(FakeTokenizer(), max_chunks=1, **SMALL).budget() == 8
    assert MarkovianThinking(FakeTokenizer()).budget() == 24576  # defaults = paper setting


def test_budget_is_what_a_full_trace_asks_for():
    env = MarkovianThinking(FakeTokenizer(), max_chunks=4, **SMALL)
    _, policy = run(env, FOUR_CHUNKS)
    assert sum(policy.max_tokens) == env.budget() == 17


# ---- the transcript the reward reads -------------------------------------------------------------

def test_answer_split_across_carry_boundary_is_scored():
    env = MarkovianThinking(FakeTokenizer(), max_chunks=3, **SMALL)
    script = [([WRONG_BOX] + list(range(102, 109)), "length"),  # a deleted wrong answer in chunk 1
              ([201, END_THINK, BOX_OPEN], "length"),           # "</think>\boxed{" ends chunk 2
              ([BOX_CLOSE, 302], "stop")]                       # "42}" opens chunk 3
    ep, policy = run(env, script)
    assert policy.prompts[2] == [1, 2, 3, WRONG_BOX, 102, 201, END_THINK, BOX_OPEN]
    assert ep.transcript == "<201></think>\\boxed{42}<302>"  # chunk 3's carry + response, decoded together
    assert boxed_score(ep.transcript, "42") == 1.0
    assert boxed_score(FakeTokenizer().decode([BOX_CLOSE, 302]), "42") == 0.0  # the response alone misses it


def test_transcript_of_a_one_chunk_trace_is_its_response():
    env = MarkovianThinking(FakeTokenizer(), max_chunks=3, **SMALL)
    ep, _ = run(env, [([101, BOX_OPEN, BOX_CLOSE], "stop")])
    assert ep.transcript == "<101>\\boxed{42}"


def test_transcript_at_iteration_cap_is_last_chunk():
    env = MarkovianThinking(FakeTokenizer(), max_chunks=2, **SMALL)
    ep, _ = run(env, FOUR_CHUNKS[:2])
    assert ep.transcript == "<106><107><108><201><202>"


# ---- arguments and registry ----------------------------------------------------------------------

@pytest.mark.parametrize("args, key", [
    (dict(keep_head=0), "env.args.keep_head"),
    (dict(keep_head=5), "env.args.keep_head"),              # keep_head == carryover
    (dict(carryover=8), "env.args.carryover"),              # carryover == chunk_size
    (dict(carryover=9, keep_head=2), "env.args.carryover"),
    (dict(max_chunks=0), "env.args.max_chunks"),
    (dict(chunk_size=8.0), "env.args.chunk_size"),
])
def test_invalid_args_name_the_key(args, key):
    kwargs = {**SMALL, "max_chunks": 2, **args}
    for cls in (MarkovianThinking, LongCoT):
        with pytest.raises(ValueError, match=re.escape(key) + ":"):
            cls(FakeTokenizer(), **kwargs)


def test_registered_and_built_from_config():
    assert "markovian" in ENVIRONMENTS and "longcot" in ENVIRONMENTS
    env = build_environment("markovian", FakeTokenizer(), {"chunk_size": 8, "carryover": 5, "max_chunks": 3,
                                                          "keep_head": 2})
    assert isinstance(env, MarkovianThinking) and env.budget() == 14
    with pytest.raises(ConfigError, match=r"env\.args\.max_token: unknown argument"):
        build_environment("markovian", FakeTokenizer(), {"max_token": 5})


# ---- LongCoT baseline -----------------------------------------------------------------------------

def test_longcot_asks_for_the_markovian_budget_in_one_context():
    args = {**SMALL, "max_chunks": 4}
    env = LongCoT(FakeTokenizer(), **args)
    ep, policy = run(env, [(list(range(101, 118)), "length")])
    assert policy.prompts == [[1, 2, 3]]
    assert policy.max_tokens == [MarkovianThinking(FakeTokenizer(), **args).budget()] == [17]
    assert len(ep.samples) == 1 and len(ep.samples[0].response_logprobs) == 17
    assert ep.metrics["chunks"] == 1.0 and ep.metrics["thinking_tokens"] == 17.0
    assert ep.metrics["ended_by_eos"] == 0.0
    assert LongCoT(FakeTokenizer()).budget() == 24576


def test_longcot_explicit_max_tokens():
    env = LongCoT(FakeTokenizer(), max_tokens=5, template="{question}", style="raw")
    ep, policy = run(env, [([BOX_OPEN, BOX_CLOSE], "stop")])
    assert policy.max_tokens == [5] and ep.metrics["ended_by_eos"] == 1.0
    assert ep.transcript == "\\boxed{42}"
    with pytest.raises(ValueError, match=r"env\.args\.max_tokens:"):
        LongCoT(FakeTokenizer(), max_tokens=0)


# ---- Delethink Eq. 3 on real episodes ---------------------------------------------------------------

def test_trace_length_norm_on_two_markovian_episodes():
    env = MarkovianThinking(FakeTokenizer(), max_chunks=4, **SMALL)
    ep_a, _ = run(env, FOUR_CHUNKS)                                   # 4 chunks, l = 16
    ep_b, _ = run(env, [(CHUNK1, "length"), ([201], "stop")])         # 2 chunks, l = 9
    episodes: list[Episode] = [ep_a, ep_b]
    rows = [(g, s) for g, ep in enumerate(episodes) for s in ep.samples]
    T = max(len(s.response_ids) for _, s in rows)
    mask = torch.zeros(len(rows), T, dtype=torch.float64)
    for r, (_, s) in enumerate(rows):
        mask[r, :len(s.response_ids)] = torch.tensor(s.response_mask, dtype=torch.float64)
    trace_ids = torch.tensor([g for g, _ in rows])
    loss = torch.randn(len(rows), T, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    got = (loss * token_weights(mask, "trace-length-norm", trace_ids=trace_ids)).sum().item()

    G, total, r = len(episodes), 0.0, 0
    for ep in episodes:  # J = (1/G) sum_g (1/l_g) sum_chunks sum_t U
        l_g = sum(len(s.response_ids) for s in ep.samples)
        summed = 0.0
        for s in ep.samples:
            for t in range(len(s.response_ids)):
                summed += float(loss[r, t])
            r += 1
        total += summed / l_g
    assert (ep_a.num_trained_tokens, ep_b.num_trained_tokens) == (16, 9)
    assert got == pytest.approx(total / G)
    per_chunk = (loss * token_weights(mask, "seq-mean-token-mean")).sum().item()
    assert per_chunk != pytest.approx(total / G)  # normalising per chunk would be a different objective


# ---- real tokenizer -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def smollm2_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_real_tokenizer_chat_prompt_and_boundary_answer(smollm2_tokenizer):
    tok = smollm2_tokenizer
    env = MarkovianThinking(tok, chunk_size=40, carryover=20, keep_head=5, max_chunks=4)
    example = {"question": "What is 6 times 7?", "answer": "42"}
    enc = lambda s: tok.encode(s, add_special_tokens=False)  # noqa: E731
    y1 = (enc(" Let me think about multiplication step by step, one careful line at a time.") * 4)[:40]
    y2 = enc(" So six sevens make forty-two.</think> The answer is \\boxed{")
    y3 = enc("42}.") + [tok.eos_token_id]
    assert len(y1) == 40 and len(y2) <= 20
    ep, policy = run(env, [(y1, "length"), (y2, "length"), (y3, "stop")], example)

    user = "What is 6 times 7?\nPut the final answer in \\boxed{}."  # SingleTurn's default template
    q = tok.apply_chat_template([{"role": "user", "content": user}], add_generation_prompt=True,
                                tokenize=True, return_dict=False)
    assert policy.prompts[0] == list(q)
    assert tok.decode(q).endswith("<|im_start|>assistant\n")
    carry2 = y1[5:][-15:]
    carry3 = (carry2 + y2)[-15:]
    assert policy.prompts[1] == list(q) + y1[:5] + carry2
    assert policy.prompts[2] == list(q) + y1[:5] + carry3
    assert policy.max_tokens == [40, 20, 20]
    assert "\\boxed{" in tok.decode(carry3) and "\\boxed{" not in tok.decode(y3)
    assert "</think> The answer is \\boxed{42}." in ep.transcript
    assert "<|im_end|>" not in ep.transcript  # special tokens are skipped
    assert boxed_score(ep.transcript, "42") == 1.0
    assert ep.metrics == {"chunks": 3.0, "thinking_tokens": float(40 + len(y2) + len(y3)),
                          "ended_by_eos": 1.0}
