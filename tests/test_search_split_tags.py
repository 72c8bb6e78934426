"""pay_per_search under random turn splits (hypothesis): whatever the per-turn token cap cuts, the
environment's verdict (answered, searches, queries, the accepted answer) is the one the unsplit text
gives, and the QA rewards agree with it. The policy replays a fixed text through a one-id-per-character
tokenizer, stopping on </search> and </answer> as vLLM does (it checks only the text of its own
generation, so a closing tag cut in two by the cap does not stop it). The search tool is a fixed
passage; the real retrieval server is used in test_search_env.py."""

from __future__ import annotations

import asyncio

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlreason.environments.pay_per_search import STOP, PayPerSearch, format_documents
from rlreason.rewards.qa import em_score, gold_answers, qa_answered, qa_em, qa_f1
from rlreason.rewards.search_cost import SearchCost
from rlreason.rubric import Rubric
from rlreason.search.client import Document
from rlreason.types import Completion

GOLD = "Tokyo"
# The passage holds the gold answer: a reward that read passage text as the answer would score it.
PASSAGE = format_documents([Document("1", "Tokyo", "Tokyo is the capital of Japan.")])
PIECES = ["<think>", "</think>", "<search>", "</search>", "<answer>", "</answer>", " Tokyo", " capital of",
          " Japan", " x", "\n", " ", "<", "/", "answer>", "search>"]


class CharTok:
    bos_token_id = None

    def encode(self, text, add_special_tokens=False):
        return [ord(c) for c in text]

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids)


class FixedPassage(PayPerSearch):
    async def tool_message(self, query: str, n_search: int) -> tuple[str, bool]:
        return (PASSAGE, False) if n_search <= self.max_searches else ("\n<warning>LIMIT</warning>\n", False)


class Replay:
    """Emits `text` in order; each call stops at a cap drawn from `caps` (cycled, bounded by max_tokens),
    at a stop string inside this call's output, or at the end of the text (EOS)."""

    def __init__(self, text: str, caps: list[int]):
        self.text, self.caps, self.pos, self.calls = text, caps, 0, 0

    async def generate(self, prompt_ids, *, max_tokens, stop=None):
        cap = min(max_tokens, self.caps[self.calls % len(self.caps)])
        self.calls += 1
        out, reason = "", "length"
        while len(out) < cap:
            if self.pos >= len(self.text):
                reason = "stop"  # EOS
                break
            out += self.text[self.pos]
            self.pos += 1
            if any(out.endswith(s) for s in stop or []):
                reason = "stop"
                break
        ids = [ord(c) for c in out]
        return Completion(ids, [-0.5] * len(ids), reason)


def make_env(**kw):
    args = {"style": "raw", "template": "Q: {question}\n", "max_turn_tokens": 10_000,
            "max_response_tokens": 100_000, **kw}
    return FixedPassage(CharTok(), **args)


def rollout(env, text, caps):
    return asyncio.run(env.rollout({"id": "q", "question": "capital of Japan?", "answer": GOLD,
                                    "data_source": "t"}, Replay(text, caps)))


texts = st.lists(st.sampled_from(PIECES), max_size=40).map("".join)
caps = st.lists(st.integers(1, 12), min_size=1, max_size=8)
VERDICT = ("searches", "answered", "invalid_actions", "abstained", "tool_errors")


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=texts, caps=caps, max_searches=st.integers(0, 3), search_enabled=st.booleans(),
       unbounded=st.booleans())
def test_env_and_rewards_agree_under_any_turn_split(text, caps, max_searches, search_enabled, unbounded):
    """answered == qa_answered; EM/F1/search_cost score exactly the answer the environment accepted
    (0 when it accepted none, even when the transcript holds <answer> .. </answer> around a passage)."""
    extra = {"max_turns": 1000} if unbounded else {}
    env = make_env(max_searches=max_searches, search_enabled=search_enabled, **extra)
    ep = rollout(env, text, caps)
    accepted = ep.info["final_answer"]
    assert ep.metrics["answered"] == float(bool(accepted))
    assert qa_answered(ep.transcript, ep).value == ep.metrics["answered"]
    em = em_score(accepted, gold_answers(GOLD)) if accepted else 0.0
    assert qa_em(ep.transcript, GOLD, ep).value == em
    if not accepted:
        assert qa_f1(ep.transcript, GOLD, ep).value == 0.0
    (cost,) = SearchCost(penalty="linear").score_group([{"id": "q", "answer": GOLD}], [ep])
    assert cost["em"] == em
    assert cost["reward"] == em * max(0.0, 1 - ep.metrics["searches"] / (max_searches + 1))
    rubric = Rubric([{"name": "qa_em"}, {"name": "qa_answered"}])
    rubric.score_group([{"answer": GOLD}], [ep])
    assert ep.reward_components == {"qa_em": em, "qa_answered": ep.metrics["answered"]}


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=texts, caps=caps, max_searches=st.integers(0, 3))
def test_turn_splits_do_not_change_the_verdict(text, caps, max_searches):
    """A policy that stops at the first closing tag of the text since the last tool message (a stop check
    that sees across the cut) gives the same verdict for any cap as for none: the cap only adds turns."""
    class AcrossCuts(Replay):
        async def generate(self, prompt_ids, *, max_tokens, stop=None):
            # the closing tags still ahead in this segment: stop at the first one, wherever the cut is
            ends = [i + len(s) for s in STOP if (i := self.text.find(s, self.segment)) >= 0]
            limit = min(ends, default=len(self.text))
            cap = min(max_tokens, self.caps[self.calls % len(self.caps)], limit - self.pos)
            self.calls += 1
            out = self.text[self.pos:self.pos + cap]
            self.pos += len(out)
            done = self.pos == limit
            if done:
                self.segment = self.pos
            ids = [ord(c) for c in out]
            return Completion(ids, [-0.5] * len(ids), "stop" if done else "length")

    def verdict(c):
        p = AcrossCuts(text, c)
        p.segment = 0
        ep = asyncio.run(make_env(max_searches=max_searches, max_turns=1000).rollout(
            {"id": "q", "question": "?", "answer": GOLD}, p))
        return {k: ep.metrics[k] for k in VERDICT}, ep.info["queries"], ep.info["final_answer"]

    assert verdict(caps) == verdict([10_000])
