"""Pay-per-search QA (MASH, "Pay-Per-Search Models are Abstention Models", arXiv 2510.01152).

The policy thinks in <think>..</think>, may call a search engine with <search> query </search>, and
ends with <answer> .. </answer>. Generation stops on </search> or </answer>:

    loop (at most max_turns = max_searches + 2 generations, as MASH's rollout):
        y <- policy(context)                        trained tokens, response_mask 1
        pending <- pending + y                      the text generated since the last tool message
        first closing tag in pending is </answer>  -> done (answered if an <answer> in pending opened it
                                                      and the answer is not empty)
        first closing tag in pending is </search>  -> searches += 1
            search disabled (abstention eval)  -> done, abstained = 1
            searches > max_searches            -> inject <warning>SEARCH LIMIT REACHED</warning>
            otherwise                          -> inject the top-k passages, each
                                                  <document>\\n(Title: t) text\\n</document>
            pending <- empty
        no closing tag: EOS -> done; length cap -> keep generating next turn (pending kept)
    injected tokens have response_mask 0 and logprob 0.0

Actions are read from `pending`, not from one generation: a tag cut by the per-turn token cap is finished
by the next turn, and a tag opened before a tool message is closed by nothing after it (the tool call ended
it). The engine's stop check sees one generation only, so a closing tag cut in two does not stop the next
turn; what that turn writes after the tag is kept in the response and has no effect.

The verdict is the only one: `episode.info["final_answer"]` holds the accepted answer (None when none was
accepted) and the QA rewards (`rlreason.rewards.qa.final_answer`) score exactly that, so `answered` and
`qa_answered` always agree and no passage is ever scored as an answer. `episode.info["max_searches"]` is
the limit the `search_cost` reward uses (OTC's c, the linear cost), so the two cannot disagree.

One Sample per episode: prompt_ids = the prompt; response_ids = generated and injected tokens in
order, at most max_response_tokens of them (a tool message that does not fit is cut and the episode
ends as truncated). A failed search (server down, slow, bad answer; see rlreason.search.client) injects a
<warning>SEARCH FAILED</warning> message, counts in `tool_errors`, and the episode goes on.
`searches` counts every search action, including those refused at the limit and empty queries (MASH
counts them the same way); the search-cost reward reads it. Prompt formatting is SingleTurn's.
Set rollout.max_model_len >= prompt tokens + max_response_tokens: the engine refuses a longer context.
"""

from __future__ import annotations

import re

from rlreason.environments.single_turn import SingleTurn
from rlreason.registry import ConfigError, register_environment
from rlreason.rewards.qa import FINAL_ANSWER, MAX_SEARCHES
from rlreason.search.client import DEFAULT_URL, Document, SearchClient
from rlreason.types import Episode, Policy, RowBound, Sample

# MASH's prompt ("baseline" in its rl_dataset.py), reworded.
MASH_TEMPLATE = (
    "Answer the given question. You must conduct reasoning inside <think> and </think> every time you get "
    "new information. After reasoning, if you find you lack some knowledge, you can call a search engine by "
    "<search> query </search> and it will return the top searched results between <document> and "
    "</document>. Every search has a cost, so search only when you need to. If no further external knowledge "
    "is needed, you can directly provide the answer inside <answer> and </answer>, without detailed "
    "illustrations. For example, <answer> Beijing </answer>. Question: {question}\n")
STOP = ["</search>", "</answer>"]
LIMIT_MSG = "\n<warning>SEARCH LIMIT REACHED</warning>\n"
FAILED_MSG = "\n<warning>SEARCH FAILED</warning>\n"
EMPTY_MSG = "\n<warning>EMPTY SEARCH QUERY</warning>\n"
NO_RESULTS_MSG = "\n<document>\nNo results.\n</document>\n"
INVALID_MSG = "\n<warning>INVALID SEARCH: put the query between <search> and </search></warning>\n"
GROUP_METRICS = ("searches", "answered", "abstained")  # also logged per info[split_by] value when it is set
TAG = re.compile(r"</?(?:think|search|answer|document|warning)>")


def parse_action(text: str) -> tuple[str | None, str]:
    """(action, content) of the text generated since the last tool message; the first closing tag decides,
    because generation stops there.

    ("answer", a) / ("search", q) when the tag was opened before it (nested openings: the innermost
    counts), ("invalid_answer" | "invalid_search", "") when it was not, (None, "") for no closing tag."""
    ends = {tag: text.find(f"</{tag}>") for tag in ("search", "answer")}
    ends = {t: i for t, i in ends.items() if i >= 0}
    if not ends:
        return None, ""
    tag = min(ends, key=ends.__getitem__)
    start = text.rfind(f"<{tag}>", 0, ends[tag])
    if start < 0:
        return f"invalid_{tag}", ""
    content = text[start + len(tag) + 2:ends[tag]]
    return tag, " ".join(TAG.sub(" ", content).split())


def format_documents(docs: list[Document], max_words: int | None = None) -> str:
    """MASH's layout. Our own tags are removed from passage text so a passage cannot fake an answer."""
    if not docs:
        return NO_RESULTS_MSG
    parts = []
    for d in docs:
        words = TAG.sub(" ", d.text).split()
        text = " ".join(words[:max_words] if max_words else words)
        parts.append(f"<document>\n(Title: {TAG.sub(' ', d.title).strip()}) {text}\n</document>\n")
    return "\n" + "".join(parts)


@register_environment("pay_per_search")
class PayPerSearch(SingleTurn):
    """Multi-turn search QA with a per-search cost (the cost itself is the `search_cost` reward)."""

    name = "pay_per_search"  # explicit: register() keeps an inherited name (SingleTurn's) otherwise

    def __init__(self, tokenizer, *, server_url: str = DEFAULT_URL, topk: int = 3, max_searches: int = 5,
                 search_enabled: bool = True, max_turn_tokens: int = 512, max_response_tokens: int = 4096,
                 max_turns: int | None = None, max_doc_words: int | None = None, timeout_s: float = 5.0,
                 retries: int = 2, template: str = MASH_TEMPLATE, style: str = "chat",
                 system_prompt: str | None = None, split_by: str | None = None) -> None:
        super().__init__(tokenizer, template=template, style=style, system_prompt=system_prompt,
                         max_tokens=max_turn_tokens, stop=STOP)
        for key, v, lo in (("topk", topk, 1), ("max_searches", max_searches, 0),
                           ("max_turn_tokens", max_turn_tokens, 1), ("max_response_tokens", max_response_tokens, 1)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ConfigError(f"env.args.{key}: must be an integer >= {lo}, got {v!r}.")
        if split_by is not None and (not isinstance(split_by, str) or not split_by):
            raise ConfigError(f"env.args.split_by: must be an info key (e.g. type) or null, got {split_by!r}.")
        self.max_searches, self.search_enabled, self.split_by = max_searches, search_enabled, split_by
        self.max_response_tokens, self.max_doc_words = max_response_tokens, max_doc_words
        self.max_turns = max_turns if max_turns is not None else max_searches + 2
        self.client = SearchClient(server_url, topk=topk, timeout_s=timeout_s, retries=retries)

    def row_bound(self) -> RowBound:
        """One row per episode: generated turns and injected documents share max_response_tokens."""
        return RowBound(prompt_extra=0, response=self.max_response_tokens)

    async def tool_message(self, query: str, n_search: int) -> tuple[str, bool]:
        """(text to inject, whether the tool failed)."""
        if n_search > self.max_searches:
            return LIMIT_MSG, False
        if not query:
            return EMPTY_MSG, False
        result = await self.client.search(query)
        if not result.ok:
            return FAILED_MSG, True
        return format_documents(result.docs, self.max_doc_words), False

    async def rollout(self, example: dict, policy: Policy) -> Episode:
        prompt_ids = self.encode_prompt(self.prompt(example))
        ids: list[int] = []
        logprobs: list[float] = []
        mask: list[int] = []
        m = {"searches": 0.0, "tool_errors": 0.0, "answered": 0.0, "turns": 0.0, "abstained": 0.0,
             "invalid_actions": 0.0, "truncated": 0.0}
        queries: list[str] = []
        answer: str | None = None
        pending: list[int] = []  # generated since the last tool message: turns cut by the cap, joined
        for _ in range(self.max_turns):
            room = self.max_response_tokens - len(ids)
            if room <= 0:
                m["truncated"] = 1.0
                break
            out = await policy.generate(prompt_ids + ids, max_tokens=min(self.max_tokens, room), stop=STOP)
            ids += out.token_ids
            logprobs += out.logprobs
            mask += [1] * len(out.token_ids)
            pending += out.token_ids
            m["turns"] += 1
            action, content = parse_action(self.decode(pending))
            if action in ("answer", "invalid_answer"):
                answer = content if action == "answer" else None
                m["answered"] = float(bool(answer))
                m["invalid_actions"] += float(action == "invalid_answer")
                break
            if action in ("search", "invalid_search") and not self.search_enabled:
                m["searches"] += 1
                m["abstained"] = 1.0  # with the tool removed, asking for it is the abstention
                break
            if action == "search":
                m["searches"] += 1
                queries.append(content)
                text, failed = await self.tool_message(content, int(m["searches"]))
                m["tool_errors"] += float(failed)
            elif action == "invalid_search":
                m["invalid_actions"] += 1
                text = INVALID_MSG
            elif out.finish_reason == "length":
                continue  # mid-thought at the turn cap: the next turn continues it
            else:
                break  # EOS without an action
            pending = []
            inject = self.encode(text)[:self.max_response_tokens - len(ids)]  # hard bound on the response
            ids += inject
            logprobs += [0.0] * len(inject)
            mask += [0] * len(inject)
        else:
            m["truncated"] = float(not m["answered"] and not m["abstained"])
        if self.split_by is not None:
            group = (example.get("info") or {}).get(self.split_by)
            if group is None:
                raise ValueError(f"env.args.split_by: question {example.get('id')!r} has no info.{self.split_by}")
            m.update({f"{group}/{k}": m[k] for k in GROUP_METRICS})
        return Episode([Sample(prompt_ids, ids, logprobs, mask)], transcript=self.decode(ids), metrics=m,
                       info={"queries": queries, FINAL_ANSWER: answer, MAX_SEARCHES: self.max_searches})
