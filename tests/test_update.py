"""The policy update's accumulation: splitting an optimizer step into micro-batches changes the work, not the
update; and under bf16 autocast the fp32 weights are cast once per optimizer step, not once per micro-batch."""

import random

import pytest

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from rlreason.config import AlgoConfig, TrainerConfig
from rlreason.trainer.update import UpdateContext, policy_update
from test_shared_prefix import _model, _rows  # tests/ is on sys.path


def _update(rows, micro: int, amp: torch.dtype | None, algo: AlgoConfig | None = None) -> dict[str, torch.Tensor]:
    # float64 without autocast: micro-batching is exact up to rounding, and float32 rounding is amplified
    # by the cancellation of +/- advantages in a tiny random model (~1e-4 of the update).
    model = _model() if amp is not None else _model().double()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ctx = UpdateContext(model, opt, None, None, torch.device("cpu"), amp, 0, 0.8)
    random.seed(0)
    policy_update(rows, ctx, algo or AlgoConfig(tis_cap=2.0), TrainerConfig(micro_batch_size=micro), None)
    return {n: p.detach() - before[n] for n, p in model.named_parameters()}


def test_micro_batch_split_gives_the_same_update():
    rows = _rows(4, groups=3, G=4)
    whole = _update(rows, 12, None)
    for micro in (1, 5):
        split = _update(rows, micro, None)
        for n, d in whole.items():
            torch.testing.assert_close(split[n], d, atol=1e-6 * float(d.abs().max()) + 1e-12, rtol=1e-6, msg=n)
    assert any(float(d.abs().max()) > 0 for d in whole.values())


def test_micro_batch_split_under_bf16_autocast_keeps_direction_and_size():
    """bf16 rounds differently per batch shape, so not equal: but a split that dropped, repeated or mis-cast
    a micro-batch would change the update's direction or size by far more than 2%."""
    rows = _rows(4, groups=3, G=4)
    whole = torch.cat([d.flatten() for d in _update(rows, 12, torch.bfloat16).values()])
    for micro in (1, 5):
        split = torch.cat([d.flatten() for d in _update(rows, micro, torch.bfloat16).values()])
        assert torch.nn.functional.cosine_similarity(split, whole, dim=0) > 0.99
        assert abs(split.norm() / whole.norm() - 1) < 0.02


def test_entropy_kl_and_multi_epoch_terms_also_split_exactly():
    rows = _rows(5, groups=2, G=4)
    algo = AlgoConfig(entropy_coef=0.01, tis_cap=None)
    whole, split = _update(rows, 8, None, algo), _update(rows, 3, None, algo)
    for n, d in whole.items():
        torch.testing.assert_close(split[n], d, atol=1e-4 * float(d.abs().max()) + 1e-9, rtol=1e-4, msg=n)


class _CastCounter(TorchDispatchMode):
    """Counts fp32 -> bf16 casts of 2-D tensors (the weight matrices) dispatched during the update."""

    def __init__(self) -> None:
        super().__init__()
        self.casts = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if (func is torch.ops.aten._to_copy.default and args[0].dim() == 2 and args[0].dtype == torch.float32
                and kwargs.get("dtype") == torch.bfloat16):
            self.casts += 1
        return func(*args, **kwargs)


def test_bf16_weight_casts_once_per_optimizer_step_not_per_micro_batch():
    rows = _rows(6, groups=3, G=4)
    counts = {}
    for micro in (12, 2):
        model = _model()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        ctx = UpdateContext(model, opt, None, None, torch.device("cpu"), torch.bfloat16, 0, 1.0)
        with _CastCounter() as counter:
            policy_update(rows, ctx, AlgoConfig(), TrainerConfig(micro_batch_size=micro), None)
        counts[micro] = counter.casts
    assert counts[12] > 0
    assert counts[2] == counts[12], counts  # 6 micro-batches, still one cast per weight


def test_gradient_checkpointing_recomputes_inside_the_step_region_and_matches():
    """Checkpointed layers re-run their forward during backward, i.e. inside `full_precision`: they must
    recompute under the forward's autocast state and give the same update as without checkpointing."""
    rows = _rows(7, groups=2, G=3)
    out = {}
    for ckpt in (False, True):
        model = _model()
        if ckpt:
            model.gradient_checkpointing_enable()
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        ctx = UpdateContext(model, opt, None, None, torch.device("cpu"), torch.bfloat16, 0, 1.0)
        random.seed(0)
        policy_update(rows, ctx, AlgoConfig(), TrainerConfig(micro_batch_size=2), None)
        out[ckpt] = torch.cat([(p.detach() - before[n]).flatten() for n, p in model.named_parameters()])
    assert torch.nn.functional.cosine_similarity(out[True], out[False], dim=0) > 0.999


def _stub_update(rows, vocab: int, algo: AlgoConfig, *, mini_batches: int, micro: int, epochs: int = 1):
    from token_table_policy import RecordingSGD, TokenTable
    model = TokenTable(vocab)
    opt = RecordingSGD(model.parameters())
    ctx = UpdateContext(model, opt, None, None, torch.device("cpu"), None, 0, 1.0, share_prompts=False)
    tr = TrainerConfig(mini_batches=mini_batches, micro_batch_size=micro, ppo_epochs=epochs, max_grad_norm=1e9)
    metrics = policy_update(rows, ctx, algo, tr, None)
    return opt.grads, metrics


def test_trace_length_norm_with_mini_batches_uses_whole_traces():
    """Delethink Eq. 3 per mini-batch: J = (1/G) sum_g (1/l_g) sum_chunks sum_t U, with l_g the valid tokens of the
    WHOLE trace g (all its chunks) and G the traces of the mini-batch. Reference: an explicit float64 loop over
    whole traces, against the per-token weights read back from the gradients of a fixed (lr 0) stub model."""
    from token_table_policy import random_rows, read_weights
    rows, vocab = random_rows(3, groups=6, G=3, max_chunks=4)
    length: dict[int, int] = {}
    for r in rows:
        length[r.trace_id] = length.get(r.trace_id, 0) + sum(r.response_mask)
    trace_of = {tok: r.trace_id for r in rows for tok, m in zip(r.response_ids, r.response_mask) if m}
    for mini_batches in (1, 2, 4):
        for micro in (1, 3, 64):
            random.seed(mini_batches * 100 + micro)
            grads, _ = _stub_update(rows, vocab, AlgoConfig(loss_agg_mode="trace-length-norm"),
                                    mini_batches=mini_batches, micro=micro)
            assert len(grads) == mini_batches
            seen: set[int] = set()
            for got in read_weights(grads, rows, vocab):
                traces = {trace_of[tok] for tok in got}
                assert not traces & seen, f"a trace is split over mini-batches ({mini_batches=}, {micro=})"
                seen |= traces
                # every valid token of each trace present is in this mini-batch
                assert set(got) == {tok for tok, g in trace_of.items() if g in traces}
                G = sum(1 for g in traces if length[g] > 0)
                for tok, w in got.items():
                    assert w == pytest.approx(1.0 / (length[trace_of[tok]] * G), rel=1e-6), (mini_batches, micro)
            assert seen == {g for g in length if length[g] > 0}


def test_loss_metrics_are_token_means_of_the_mini_batch_whatever_the_micro_batch_split():
    """A metric such as loss/engine_trainer_logprob_diff is a mean over the mini-batch's response tokens; averaging
    per-micro-batch means instead would weigh a micro-batch of short rows like one of long rows and move the
    logged value with trainer.micro_batch_size (or with the micro-batch layout)."""
    rows = _rows(4, groups=3, G=4)

    def metrics(micro: int) -> dict[str, float]:
        model = _model().double()
        ctx = UpdateContext(model, torch.optim.SGD(model.parameters(), lr=0.0), None, None, torch.device("cpu"),
                            None, 0, 0.8)
        random.seed(0)
        return policy_update(rows, ctx, AlgoConfig(tis_cap=2.0), TrainerConfig(micro_batch_size=micro), None)

    whole = metrics(len(rows))
    for micro in (1, 5):
        split = metrics(micro)
        for k in ("engine_trainer_logprob_diff", "tis_weight", "ratio_mean", "approx_kl", "clipfrac"):
            assert split[f"loss/{k}"] == pytest.approx(whole[f"loss/{k}"], rel=1e-6, abs=1e-9), (micro, k)
