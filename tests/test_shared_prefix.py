"""The shared-prefix forward (one prompt pass per group) must be the same function as one forward per row:
same response logits, same gradients, under left-padded prompts of different lengths and right-padded
responses of different lengths; and the trainer's update must give the same weights either way."""

import random

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlreason.config import AlgoConfig, TrainerConfig
from rlreason.models import resolve_model
from rlreason.trainer.batch import Row, collate, group_order, response_logits
from rlreason.trainer.shared_prefix import distinct_prompts, shared_response_logits
from rlreason.trainer.update import UpdateContext, policy_update


def _rows(seed: int, groups: int = 3, G: int = 3, vocab: int = 1000) -> list[Row]:
    rng = random.Random(seed)
    rows = []
    for g in range(groups):
        prompt = [rng.randrange(5, vocab) for _ in range(rng.randint(3, 9))]
        for _ in range(G):
            t = rng.randint(2, 7)
            mask = [1] * t
            if t > 3:
                mask[1] = 0  # a tool-output token: masked from the loss, still attended to
            rows.append(Row(prompt, [rng.randrange(5, vocab) for _ in range(t)], [-1.0] * t, mask,
                            rng.choice([-1.0, 0.5, 1.0]), len(rows), g))
    rng.shuffle(rows)
    return rows


def _model(name: str = "tiny-random") -> torch.nn.Module:
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(resolve_model(name, dtype="fp32"), dtype=torch.float32)


def _masked(logits: torch.Tensor, b) -> torch.Tensor:
    return logits * (b.attention_mask[:, -logits.shape[1]:, None] > 0)


def test_group_order_puts_same_prompt_rows_together():
    rows = _rows(1, groups=4, G=4)
    order = group_order(rows)
    assert sorted(order) == list(range(len(rows)))
    prompts = [tuple(rows[i].prompt_ids) for i in order]
    runs = [p for k, p in enumerate(prompts) if k == 0 or p != prompts[k - 1]]
    assert len(runs) == len(set(prompts))  # each prompt is one contiguous run


def assert_shared_equals_plain(model: torch.nn.Module, b, seed: int, tol: float) -> torch.Tensor:
    """Logits and every parameter gradient of the shared-prefix forward equal the per-row forward's (sums
    in a different order: gradient tolerance relative to each gradient's scale). Returns the plain logits."""
    plain = _masked(response_logits(model, b), b)
    weights = torch.randn(plain.shape, generator=torch.Generator().manual_seed(seed)).to(plain.device)
    (plain * weights).sum().backward()
    g_plain = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    shared = _masked(shared_response_logits(model, b), b)
    torch.testing.assert_close(shared, plain, atol=tol, rtol=10 * tol)
    (shared * weights).sum().backward()
    for n, p in model.named_parameters():
        if n in g_plain:
            scale = float(g_plain[n].abs().max())
            torch.testing.assert_close(p.grad, g_plain[n], atol=2 * tol * scale + tol / 100, rtol=10 * tol, msg=n)
    model.zero_grad()
    return plain.detach()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_shared_prefix_logits_and_gradients_equal_plain_forward(seed):
    b = collate(_rows(seed), pad_id=0)
    assert distinct_prompts(b)[0].shape[0] < b.response_ids.shape[0]
    assert_shared_equals_plain(_model(), b, seed, tol=1e-5)


def test_one_token_prompts_share_too():
    """The prompt pass stops one token short, so a one-token prompt leaves an all-padding row there (its
    response pass attends to the prompt token it starts with); if every prompt is one token, nothing is shared."""
    rows = _rows(5)
    for r in rows[:3]:  # the first group's prompt becomes one token long
        r.prompt_ids = rows[0].prompt_ids[:1]
    b = collate(rows, pad_id=0)
    prompts, prompt_mask, _ = distinct_prompts(b)
    assert prompts.shape[1] >= 2 and int(prompt_mask.sum(-1).min()) == 1
    assert_shared_equals_plain(_model(), b, 5, tol=1e-5)
    for r in rows:
        r.prompt_ids = r.prompt_ids[:1]
    b = collate(rows, pad_id=0)
    assert distinct_prompts(b)[0].shape[1] == 1
    assert_shared_equals_plain(_model(), b, 5, tol=1e-5)


def test_not_shared_when_every_prompt_is_distinct_or_checkpointing():
    from rlreason.trainer.shared_prefix import can_share
    model = _model()
    assert can_share(model, 2, 4, 5)
    assert not can_share(model, 4, 4, 5)  # nothing to share
    assert not can_share(model, 2, 4, 1)  # a one-token response has nothing after the prompt pass
    model.config.sliding_window = 4
    assert not can_share(model, 2, 4, 5)  # a sliding-window cache is not rebuilt: per-row path
    model.config.use_sliding_window = False  # Qwen2-style: the window is configured but off
    assert can_share(model, 2, 4, 5)
    model.gradient_checkpointing_enable()
    assert not can_share(model, 2, 4, 5)  # checkpointed layers drop the cache


def test_policy_update_same_weights_with_and_without_sharing():
    rows = _rows(3, groups=3, G=4)
    out = {}
    for share in (False, True):
        model = _model()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        ctx = UpdateContext(model, opt, None, None, torch.device("cpu"), None, 0, 1.0, share_prompts=share)
        random.seed(0)
        policy_update(rows, ctx, AlgoConfig(tis_cap=None), TrainerConfig(micro_batch_size=4), None)
        out[share] = {n: p.detach().clone() for n, p in model.named_parameters()}
    for n in out[False]:
        torch.testing.assert_close(out[True][n], out[False][n], atol=1e-6, rtol=1e-5, msg=n)


@pytest.mark.slow
def test_shared_prefix_on_smollm2_matches_plain_fp32_and_bf16():
    """The real model: fp32 paths agree to float noise; under the trainer's bf16 autocast the shared path is
    no further from the fp32 logprobs than the plain path is (both ~0.035 nats mean here)."""
    from transformers import AutoTokenizer

    from rlreason.algos.losses import logprobs_from_logits
    d = resolve_model("smollm2-135m-instruct", dtype="fp32")
    tok = AutoTokenizer.from_pretrained(d)
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
    rows = []
    for g, q in enumerate(["What is 3 + 5?", "Name a prime number larger than ten, please."]):
        p = tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=True,
                                    return_dict=False)
        for a in ["It is 8.", "The answer is \\boxed{8} because 3 + 5 = 8.", "11"]:
            ids = tok(a, add_special_tokens=False)["input_ids"]
            rows.append(Row(p, ids, [0.0] * len(ids), [1] * len(ids), 1.0, len(rows), g))
    b = collate(rows, tok.pad_token_id)
    m = b.response_mask > 0

    def lp(share: bool, bf16: bool) -> torch.Tensor:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = shared_response_logits(model, b) if share else response_logits(model, b)
            return logprobs_from_logits(logits, b.response_ids)[m]
    exact = lp(False, False)
    assert (lp(True, False) - exact).abs().max() < 1e-3
    err_plain, err_shared = (lp(False, True) - exact).abs().mean(), (lp(True, True) - exact).abs().mean()
    assert err_shared <= 1.5 * err_plain + 0.01, (err_shared, err_plain)


def _update_delta(rows: list[Row], share: bool, tr: TrainerConfig, algo: AlgoConfig) -> dict[str, torch.Tensor]:
    model = _model().double()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ctx = UpdateContext(model, torch.optim.SGD(model.parameters(), lr=0.1), None, None, torch.device("cpu"), None,
                        0, 0.8, share_prompts=share)
    random.seed(0)
    policy_update(rows, ctx, algo, tr, None)
    return {n: p.detach() - before[n] for n, p in model.named_parameters()}


def _prompt_passes(rows: list[Row], tr: TrainerConfig) -> int:
    """Forward calls that run prompts alone (the shared forward's prompt pass keeps only the last logit)."""
    model = _model()
    calls = []
    forward = model.forward

    def spy(*args, **kwargs):
        calls.append(kwargs.get("logits_to_keep"))
        return forward(*args, **kwargs)
    model.forward = spy
    ctx = UpdateContext(model, torch.optim.SGD(model.parameters(), lr=0.1), None, None, torch.device("cpu"), None,
                        0, 1.0, share_prompts=True)
    random.seed(0)
    policy_update(rows, ctx, AlgoConfig(), tr, None)
    return calls.count(1)


def test_each_prompt_runs_once_per_mini_batch_not_once_per_micro_batch():
    """Micro-batches dealt by response length mix the prompt groups; the prompts still run in one pass."""
    rows = _rows(4, groups=3, G=4)
    for k, r in enumerate(rows):  # lengths spread within each group: micro-batches by length mix the groups
        r.response_ids = r.response_ids[:2] + [7] * (k % 5)
        r.response_mask, r.rollout_logprobs = [1] * len(r.response_ids), [-1.0] * len(r.response_ids)
    assert _prompt_passes(rows, TrainerConfig(micro_batch_size=4)) == 1
    # Two mini-batches take two updates, so old logprobs come from a forward of their own: three prompt passes.
    assert _prompt_passes(rows, TrainerConfig(micro_batch_size=4, mini_batches=2)) == 3


@pytest.mark.parametrize("seed", [0, 1])
def test_update_with_prompts_run_once_equals_the_per_row_update_in_float64(seed):
    """The summed gradient pushed through one prompt pass is the per-row forward's gradient: same weights
    after two epochs of two mini-batches (old logprobs from a separate pass), truncated IS on. The model runs
    in float64; the log-softmax works in float32 (logprobs_from_logits), which bounds the agreement at ~1e-7
    of the update, as in test_micro_batches.py."""
    rows = _rows(seed, groups=4, G=3)
    tr, algo = TrainerConfig(micro_batch_size=2, mini_batches=2, ppo_epochs=2), AlgoConfig(tis_cap=2.0)
    plain, shared = _update_delta(rows, False, tr, algo), _update_delta(rows, True, tr, algo)
    for n, d in plain.items():
        torch.testing.assert_close(shared[n], d, atol=1e-6 * float(d.abs().max()) + 1e-12, rtol=1e-6, msg=n)
    assert any(float(d.abs().max()) > 0 for d in plain.values())


def test_prompts_that_outweigh_a_micro_batch_run_per_micro_batch():
    """The one prompt pass lives until the mini-batch's last micro-batch: it is used only when it runs no
    more tokens than one micro-batch of the longest rows."""
    from rlreason.trainer.shared_prefix import once_per_minibatch
    model = _model()
    rows = _grpo_like(prompts=4, prompt_len=40, G=2, response_len=3)
    assert not once_per_minibatch(model, rows, 2)  # 4 x 39 prompt tokens > 2 x (40 + 3)
    assert once_per_minibatch(model, rows, 4)  # <= 4 x 43
    assert _prompt_passes(rows, TrainerConfig(micro_batch_size=2)) == 4  # one per micro-batch (a group each)
    model.gradient_checkpointing_enable()
    assert not once_per_minibatch(model, rows, 4)


def _grpo_like(prompts: int, prompt_len: int, G: int, response_len: int) -> list[Row]:
    rng = random.Random(0)
    rows = []
    for g in range(prompts):
        p = [rng.randrange(5, 1000) for _ in range(prompt_len)]
        for _ in range(G):
            rows.append(Row(p, [rng.randrange(5, 1000) for _ in range(response_len)], [-1.0] * response_len,
                            [1] * response_len, rng.choice([-1.0, 1.0]), len(rows), g))
    return rows
