"""The curriculum_ei environment: the verdict and c1/c2 it writes into episodes, initialisation from the
initial model's refusals, the hill-climbing moves and stop rule, and its state across a resume."""

import asyncio
import json
import math

import pytest

from rlreason.environments.curriculum_ei import Curriculum, CurriculumEI
from rlreason.registry import ConfigError, build_environment
from rlreason.rewards.idk import Judgement
from rlreason.types import Completion

P = "env/curriculum_ei/"


class _Tok:
    """Enough tokenizer for the environment: one id per character."""
    bos_token_id = None

    def encode(self, text, add_special_tokens=False):
        return [ord(c) for c in text]

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids)


def make_env(**args):
    return build_environment("curriculum_ei", _Tok(), {"style": "raw", "template": "Q: {question}\nA:", **args})


def stats_of(judgements):
    """What a trainer hands to on_step_end: the batch means of the episodes' metrics."""
    rows = [j.metrics() for j in judgements]
    return {P + k: sum(r[k] for r in rows) / len(rows) for k in rows[0]} | {"rollout/episodes": float(len(rows))}


def J(kind, d=0):
    return Judgement(kind == "c", kind == "r", d, kind)


def test_rollout_writes_the_verdict_and_stamps_c1_c2():
    class Scripted:
        def __init__(self, text):
            self.text = text

        async def generate(self, prompt_ids, *, max_tokens, stop=None):
            ids = [ord(c) for c in self.text]
            return Completion(ids, [0.0] * len(ids), "stop", self.text)

    env = make_env(c1=1.5, c2=0.7)
    ep = asyncio.run(env.rollout({"question": "9 * 13", "answer": "117"},
                                 Scripted(" 9 * 13 is hard.\nToo hard.\n\\boxed{I don't know}")))
    assert ep.metrics["refused"] == 1.0 and ep.metrics["steps"] == 2.0 and ep.metrics["correct"] == 0.0
    assert (ep.info["c1"], ep.info["c2"]) == (1.5, 0.7)
    ep = asyncio.run(env.rollout({"question": "2 + 3", "answer": "5"}, Scripted(" 2 + 3 = 5\n\\boxed{5}")))
    assert ep.metrics["correct"] == 1.0 and ep.metrics["answered"] == 1.0
    assert make_env().curriculum.c1 is None  # auto: unset until the first on_step_end


def test_initialises_c1_c2_from_the_initial_models_refusals():
    env = make_env()
    # refusals after d = 1, 3, 2, 2 steps (answers must not enter the refusal statistics):
    # mean 2, sample variance ((1-2)^2 + (3-2)^2 + 0 + 0) / (4 - 1) = 2/3, std = 0.816497 (the population
    # std sqrt(2/4) = 0.707107 would give step 0.141421, c2 0.814);
    # step = min(0.2 * 0.816497, 0.5) = 0.163299; c1 = 2 + 0.163299 = 2.163299;
    # c2 = -ln 0.1 / (4 * 0.816497) = 2.302585 / 3.265986 = 0.705020
    stats = stats_of([J("r", 1), J("r", 3), J("r", 2), J("r", 2), J("c", 9), J("w", 1), J("w", 1), J("c", 3)])
    env.on_step_end(stats)
    c = env.curriculum
    assert c.step == pytest.approx(0.163299, abs=1e-6)
    assert c.c1 == pytest.approx(2.163299, abs=1e-6)
    assert c.c2 == pytest.approx(0.705020, abs=1e-6)
    # the stats gain the curriculum's quantities: precision = 2 correct / 4 answered, refusal rate 4 / 8,
    # f = 0.8 * 0.5 + 0.2 * 0.5 = 0.5
    assert stats[P + "precision"] == 0.5 and stats[P + "refusal_rate"] == 0.5 and stats[P + "f"] == 0.5
    assert stats[P + "steps_before_refusal"] == 2.0 and stats[P + "c1"] == c.c1 and c.f_prev == 0.5


def test_step_is_capped_at_one_half():
    # refusals after d = 0, 4, 2, 6: mean 3, sample variance (9 + 1 + 1 + 9) / 3 = 20/3, std = 2.581989;
    # step = min(0.516398, 0.5) = 0.5; c1 = 3.5; c2 = 2.302585 / (4 * 2.581989) = 0.222947
    env = make_env()
    env.on_step_end(stats_of([J("r", 0), J("r", 4), J("r", 2), J("r", 6), J("c", 9), J("w", 1)]))
    c = env.curriculum
    assert (c.step, c.c1, c.c2) == (0.5, pytest.approx(3.5), pytest.approx(0.222947, abs=1e-6))


def test_no_floor_on_std_by_default_and_an_explicit_floor_when_asked():
    # refusals after 1, 1, 2 steps: mean 4/3, sample std sqrt((1/9 + 1/9 + 4/9) / 2) = sqrt(1/3) = 0.577350,
    # below the old hidden floor of 1.0: step = 0.115470, c1 = 1.448803, c2 = 2.302585 / 2.309401 = 0.997049
    batch = [J("r", 1), J("r", 1), J("r", 2), J("c", 3)]
    env = make_env()
    env.on_step_end(stats_of(batch))
    c = env.curriculum
    assert (c.step, c.c1, c.c2) == (pytest.approx(0.115470, abs=1e-6), pytest.approx(1.448803, abs=1e-6),
                                    pytest.approx(0.997049, abs=1e-6))
    # min_std = 1.0 asked for: std 0.577 -> 1.0: step 0.2, c1 = 4/3 + 0.2 = 1.533333, c2 = 2.302585 / 4
    env = make_env(min_std=1.0)
    env.on_step_end(stats_of(batch))
    c = env.curriculum
    assert (c.step, c.c1, c.c2) == (pytest.approx(0.2), pytest.approx(1.533333, abs=1e-6),
                                    pytest.approx(0.575646, abs=1e-6))


def test_initialisation_fallbacks():
    # never refuses: the steps of all responses, d = 2, 2, 3, 1, 2, 2: mean 2, sample variance 2 / 5 = 0.4,
    # std 0.632456; step 0.126491, c1 2.126491, c2 = 2.302585 / 2.529822 = 0.910177
    env = make_env()
    env.on_step_end(stats_of([J("c", 2), J("w", 2), J("w", 3), J("c", 1), J("w", 2), J("w", 2)]))
    c = env.curriculum
    assert (c.step, c.c1, c.c2) == (pytest.approx(0.126491, abs=1e-6), pytest.approx(2.126491, abs=1e-6),
                                    pytest.approx(0.910177, abs=1e-6))
    # one refusal (no sample std) or all at the same d (std 0): c2 would be infinite -> an error naming the
    # floor's key, unless a floor is set: min_std = 0.5 -> step 0.1, c1 = 3.1, c2 = 2.302585 / 2 = 1.151293
    for batch in ([J("r", 3), J("w", 1)], [J("r", 3), J("r", 3), J("w", 1)]):
        with pytest.raises(ConfigError, match="env.args.min_std"):
            make_env().on_step_end(stats_of(batch))
        env = make_env(min_std=0.5)
        env.on_step_end(stats_of(batch))
        c = env.curriculum
        assert (c.step, c.c1, c.c2) == (pytest.approx(0.1), pytest.approx(3.1), pytest.approx(1.151293, abs=1e-6))
    # values given in env.args are kept; with c2 and step given the spread is not needed
    env = make_env(c1=5.0, c2=2.0, step=1.0)
    env.on_step_end(stats_of([J("r", 0), J("r", 4)]))
    assert (env.curriculum.c1, env.curriculum.c2, env.curriculum.step) == (5.0, 2.0, 1.0)
    env = make_env(c2=2.0, step=1.0)
    env.on_step_end(stats_of([J("r", 3), J("w", 1)]))
    assert (env.curriculum.c1, env.curriculum.c2, env.curriculum.step) == (4.0, 2.0, 1.0)


def test_mean_sample_std_from_batch_means_equals_statistics_stdev():
    """The curriculum sees batch means only; the sample std it derives must be the textbook one."""
    import random
    import statistics

    from rlreason.environments.curriculum_ei import mean_sample_std
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(2, 40)
        xs = [rng.randint(0, 12) for _ in range(rng.randint(2, n))]
        # a batch of n episodes of which len(xs) have the quantity (0 for the others)
        s, s2, share = sum(xs) / n, sum(x * x for x in xs) / n, len(xs) / n
        mean, std = mean_sample_std(s, s2, share, n)
        assert mean == pytest.approx(statistics.fmean(xs), abs=1e-9)
        assert std == pytest.approx(statistics.stdev(xs), abs=1e-6)
    assert math.isnan(mean_sample_std(3.0, 9.0, 1.0, 1)[1])  # one value: no sample std


def test_initialisation_needs_the_episode_count():
    stats = stats_of([J("r", 1), J("r", 3)])
    del stats["rollout/episodes"]
    with pytest.raises(ValueError, match="rollout/episodes"):
        make_env().on_step_end(stats)


def out(precision, refusal, lam=0.2):
    return {"precision": precision, "refusal_rate": refusal, "f": (1 - lam) * precision + lam * (1 - refusal)}


MEANS = {"refused": 0.5, "refusal_steps": 1.0, "refusal_steps_sq": 2.5, "steps": 0, "steps_sq": 0}


def run_stage(c, precisions, refusal=0.5):
    return [c.update(MEANS, out(p, refusal)) for p in precisions]


def test_hill_climbing_moves_and_stop_rule():
    c = Curriculum(c1=2.0, c2=1.0, step=0.5)
    assert c.update(MEANS, out(0.40, 0.5)) == "init"  # f_init = 0.8 * 0.4 + 0.1 = 0.42
    # stage 1 at c1 = 2.0: precision moves every round -> ends after max_rounds_per_stage = 3 rounds;
    # f = 0.8 * 0.6 + 0.1 = 0.58 > 0.42 improved -> c1 += step
    assert run_stage(c, [0.50, 0.55, 0.60]) == ["round", "round", "stage_end"]
    assert c.c1 == 2.5 and c.stage == 1
    # stage 2 at 2.5: f = 0.8 * 0.5 + 0.1 = 0.50 < 0.58 worse -> c1 -= step (back to 2.0, tried with
    # 0.58, which is not lower than 0.50: no stop)
    assert run_stage(c, [0.52, 0.56, 0.50])[-1] == "stage_end"
    assert c.c1 == 2.0 and not c.done
    # stage 3 at 2.0: f = 0.8 * 0.55 + 0.1 = 0.54 > 0.50 improved -> c1 + step = 2.5 was tried and
    # scored 0.50 < 0.54 -> stop, c1 stays 2.0
    assert run_stage(c, [0.60, 0.50, 0.55])[-1] == "done"
    assert c.done and c.c1 == 2.0 and c.stage == 3
    assert c.update(MEANS, out(0.9, 0.1)) == "done" and c.c1 == 2.0  # no more moves
    assert [h["c1"] for h in c.history] == [2.0, 2.5, 2.0, 2.0]
    assert c.tried == {"2.000000": pytest.approx(0.54), "2.500000": pytest.approx(0.50)}


def test_worse_from_the_start_moves_down():
    c = Curriculum(c1=2.0, c2=1.0, step=0.5)
    c.update(MEANS, out(0.60, 0.5))  # f_init = 0.58
    run_stage(c, [0.1, 0.3, 0.5])  # f = 0.5 < 0.58 -> c1 -= step
    assert c.c1 == 1.5 and not c.done


def test_stage_ends_early_when_precision_and_refusal_rate_settle():
    c = Curriculum(c1=2.0, c2=1.0, step=0.5, max_rounds_per_stage=5)
    c.update(MEANS, out(0.4, 0.5))
    # moves of 0.002 < 0.003 in both: settled at the stage's 2nd round (the 1st has nothing to compare)
    assert [c.update(MEANS, out(p, r)) for p, r in [(0.500, 0.300), (0.502, 0.298)]] == ["round", "stage_end"]
    # a move of 0.004 in the refusal rate alone keeps the stage going
    assert [c.update(MEANS, out(p, r)) for p, r in [(0.5, 0.3), (0.5, 0.304), (0.5, 0.305)]] == \
        ["round", "round", "stage_end"]


def test_state_dict_round_trip_continues_identically():
    a = make_env()
    a.on_step_end(stats_of([J("r", 1), J("r", 3), J("c", 2), J("w", 2)]))
    batches = [[J("r", 2), J("c", 2), J("c", 1), J("w", 1)], [J("r", 3), J("c", 2), J("w", 1), J("w", 1)],
               [J("c", 2), J("c", 2), J("r", 1), J("w", 1)], [J("r", 4), J("c", 2), J("r", 1), J("w", 1)]]
    for b in batches[:2]:
        a.on_step_end(stats_of(b))
    state = json.loads(json.dumps(a.state_dict()))  # what a checkpoint stores
    b = make_env()
    b.load_state_dict(state)
    assert b.state_dict() == a.state_dict()
    for batch in batches[2:]:
        sa, sb = stats_of(batch), stats_of(batch)
        a.on_step_end(sa)
        b.on_step_end(sb)
        assert sa == sb
    assert a.state_dict() == b.state_dict() and a.curriculum.stage == 1
    assert make_env().state_dict() != a.state_dict()
    with pytest.raises(ValueError, match="curriculum state"):
        make_env().load_state_dict({"curriculum": {"c1": 1.0}})


def test_nothing_answered_gives_precision_zero_and_f_from_refusals():
    env = make_env()
    stats = stats_of([J("r", 1), J("r", 2)])
    env.on_step_end(stats)
    assert stats[P + "precision"] == 0.0 and stats[P + "f"] == 0.0 and stats[P + "refusal_rate"] == 1.0
    assert math.isnan(env.summarize({"correct": 0.0, "refused": 0.0, "refusal_steps": 0.0})["steps_before_refusal"])


def test_bad_arguments_name_the_key():
    with pytest.raises(ConfigError, match="env.args.steps.*Allowed: .*lines"):
        make_env(steps="words")
    with pytest.raises(ConfigError, match="env.args.verifier"):
        make_env(verifier="exact")
    with pytest.raises(ConfigError, match="env.args.lam"):
        make_env(lam=1.5)
    with pytest.raises(ConfigError, match="refusal_phrases"):
        make_env(refusal_phrases=[])
    with pytest.raises(ConfigError, match="env.args.min_std"):
        make_env(min_std=0.0)


def test_freeze_c1_ends_stages_but_never_moves_c1_or_stops():
    # the same rounds as test_hill_climbing_moves_and_stop_rule, where c1 goes 2.0 -> 2.5 -> 2.0 -> done
    c = Curriculum(c1=2.0, c2=1.0, step=0.5, freeze_c1=True)
    c.update(MEANS, out(0.40, 0.5))
    assert run_stage(c, [0.50, 0.55, 0.60]) == ["round", "round", "stage_end"]
    assert run_stage(c, [0.52, 0.56, 0.50])[-1] == "stage_end"
    assert run_stage(c, [0.60, 0.50, 0.55])[-1] == "stage_end"
    assert c.c1 == 2.0 and c.stage == 3 and not c.done
    assert [h["c1"] for h in c.history] == [2.0, 2.0, 2.0, 2.0]
    assert [round(h["f"], 6) for h in c.history] == [0.42, 0.58, 0.5, 0.54]
    # through the environment: c1 initialised from the refusals (as without the switch), then kept
    env = make_env(freeze_c1=True, max_rounds_per_stage=1)
    env.on_step_end(stats_of([J("r", 1), J("r", 3), J("c", 2), J("w", 2)]))
    c1 = env.curriculum.c1
    for batch in ([J("c", 2), J("c", 1), J("r", 2), J("w", 1)], [J("w", 2), J("w", 1), J("r", 0), J("w", 1)]):
        env.on_step_end(stats_of(batch))
    assert env.curriculum.c1 == c1 and env.curriculum.stage == 2 and not env.done
    with pytest.raises(ConfigError, match="env.args.freeze_c1"):
        make_env(freeze_c1="yes")


def test_split_by_reports_every_statistic_per_group():
    class Scripted:
        def __init__(self, text):
            self.text = text

        async def generate(self, prompt_ids, *, max_tokens, stop=None):
            ids = [ord(c) for c in self.text]
            return Completion(ids, [0.0] * len(ids), "stop", self.text)

    env = make_env(split_by="difficulty", c1=1.0, c2=1.0)
    easy = {"question": "2 + 3", "answer": "5", "info": {"difficulty": "solvable"}}
    hard = {"question": "347 * 56", "answer": "19432", "info": {"difficulty": "unsolvable"}}
    eps = [asyncio.run(env.rollout(ex, Scripted(t))) for ex, t in [
        (easy, " s1 = 2 + 3 = 5\n\\boxed{5}"), (easy, " s1 = 2 + 3 = 6\n\\boxed{6}"),
        (easy, " s1 = 2 + 3 = 5\n\\boxed{I don't know}"),
        (hard, " p1 = 347 * 6 = 2082\np2 = 347 * 50 = 17350\n\\boxed{I don't know}"), (hard, " \\boxed{1}")]]
    assert eps[0].metrics["solvable/correct"] == 1.0 and "unsolvable/correct" not in eps[0].metrics
    assert eps[3].metrics["unsolvable/refusal_steps"] == 2.0
    # the trainers' means: each key over the episodes that have it (grpo._env_metric_means)
    keys = {k for ep in eps for k in ep.metrics}
    means = {k: sum(ep.metrics[k] for ep in eps if k in ep.metrics) / sum(k in ep.metrics for ep in eps)
             for k in keys}
    s = env.summarize(means)
    # solvable: 1 correct, 1 wrong, 1 refused after 1 line -> accuracy 1/3, precision 1/2, refusal 1/3,
    # f = 0.8 * 0.5 + 0.2 * (2/3); unsolvable: 1 refused after 2 lines, 1 wrong -> precision 0, refusal 1/2
    assert s["solvable/accuracy"] == pytest.approx(1 / 3) and s["solvable/precision"] == pytest.approx(0.5)
    assert s["solvable/refusal_rate"] == pytest.approx(1 / 3)
    assert s["solvable/f"] == pytest.approx(0.8 * 0.5 + 0.2 * 2 / 3)
    assert s["solvable/steps_before_refusal"] == pytest.approx(1.0)
    assert s["unsolvable/precision"] == 0.0 and s["unsolvable/refusal_rate"] == pytest.approx(0.5)
    assert s["unsolvable/steps_before_refusal"] == pytest.approx(2.0)
    # the whole batch is unchanged: 1 correct of 3 answered, 2 of 5 refused
    assert s["precision"] == pytest.approx(1 / 3) and s["refusal_rate"] == pytest.approx(0.4)
    whole = {k: v for k, v in means.items() if "/" not in k}  # an unsplit batch: no group keys
    assert not any("/" in k for k in env.summarize(whole))
    with pytest.raises(ValueError, match="info.difficulty"):
        asyncio.run(env.rollout({"question": "1 + 1", "answer": "2", "id": "x"}, Scripted("\\boxed{2}")))
