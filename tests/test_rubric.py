"""Rubric: named-field reward functions, weights (0 = log only), group rewards, errors counted."""

import pytest

from rlreason.registry import REWARDS, ConfigError, build_environment
from rlreason.rubric import Rubric, Scored
from rlreason.types import Episode, Sample


def ep(text):
    return Episode([Sample([1], [2], [0.0], [1])], transcript=text)


@pytest.fixture(autouse=True)
def _rewards(registered):
    """This module's test rewards, registered for each test only."""
    registered(REWARDS, {"_test_len": _len_reward, "_test_raises": _raises, "_test_group": _GroupMin,
                         "_test_bad": _bad, "_test_short_group": _ShortGroup, "_test_not_a_list": _NotAList,
                         "_test_strict_args": _StrictArgs})


def _len_reward(completion: str, scale: float = 1.0) -> float:
    return scale * len(completion)


def _raises(completion: str) -> float:
    raise RuntimeError("boom")


class _GroupMin:
    """A group-level reward: 1 for the shortest transcript of the group."""

    def __init__(self):
        self.seen = 0

    def score_group(self, examples, episodes):
        self.seen += 1
        m = min(len(e.transcript) for e in episodes)
        return [Scored(float(len(e.transcript) == m), "shortest" if len(e.transcript) == m else "") for e in episodes]

    def state_dict(self):
        return {"seen": self.seen}

    def load_state_dict(self, s):
        self.seen = s["seen"]


def test_weighted_sum_and_components():
    r = Rubric([{"name": "_test_len", "weight": 0.5, "args": {"scale": 2.0}}, {"name": "_test_group", "weight": 0.0}])
    eps = [ep("abc"), ep("a")]
    r.score_group([{}, {}], eps)
    assert eps[0].reward == pytest.approx(0.5 * 6) and eps[1].reward == pytest.approx(0.5 * 2)
    # weight 0 logs without rewarding
    assert eps[1].reward_components == {"_test_len": 2.0, "_test_group": 1.0}
    assert eps[1].info["reward_reasons"]["_test_group"] == "shortest"
    assert r.state_dict() == {"_test_group": {"seen": 1}}


def test_raising_reward_is_counted_not_silent(caplog):
    r = Rubric([{"name": "_test_raises"}, {"name": "_test_len"}])
    eps = [ep("ab"), ep("c")]
    r.score_group([{}, {}], eps)
    assert r.errors["_test_raises"] == 2
    assert "boom" in caplog.text
    assert [e.reward for e in eps] == [2.0, 1.0]


def test_config_errors_name_key():
    with pytest.raises(ConfigError, match=r"rewards\[0\].name.*unknown reward 'nope'"):
        Rubric([{"name": "nope"}])
    with pytest.raises(ConfigError, match=r"rewards\[0\].args.scal.*Allowed: scale"):
        Rubric([{"name": "_test_len", "args": {"scal": 1}}])
    with pytest.raises(ConfigError, match="at least one reward"):
        Rubric([])


def test_env_args_checked():
    with pytest.raises(ConfigError, match=r"env.args.max_token.*Did you mean 'max_tokens'"):
        build_environment("single_turn", None, {"max_token": 3})
    with pytest.raises(ConfigError, match="env.name: unknown environment 'singleturn'"):
        build_environment("singleturn", None, {})


def test_registered_subclass_gets_its_own_name():
    from rlreason.environments.markovian import MarkovianThinking
    from rlreason.environments.single_turn import SingleTurn
    assert SingleTurn.name == "single_turn" and MarkovianThinking.name == "markovian"


_BAD = {"nan": float("nan"), "inf": float("inf"), "none": None, "text": "1.0", "dict_nan": {"reward": float("nan")}}


def _bad(completion: str, example: dict) -> object:
    return _BAD[example["bad"]] if completion == "x" else 1.0


@pytest.mark.parametrize("bad", sorted(_BAD))
def test_bad_reward_value_is_an_error_of_that_reward_and_never_reaches_the_total(bad, caplog):
    """NaN, inf, None, a string: counted under the reward's name, the value logged, the term 0 for that episode
    only, the total finite and the other rewards intact."""
    r = Rubric([{"name": "_test_bad", "weight": 2.0}, {"name": "_test_len", "weight": 1.0}])
    eps = [ep("x"), ep("ok")]
    r.score_group([{"bad": bad}] * 2, eps)
    assert [e.reward for e in eps] == [1.0, 2.0 + 2.0]
    assert r.errors == {"_test_bad": 1, "_test_len": 0}
    assert eps[0].reward_components["_test_bad"] == 0.0
    assert "_test_bad" in caplog.text and repr(_BAD[bad])[:6] in caplog.text


class _ShortGroup:
    """A group reward with a bug: one value fewer than the episodes (zip used to drop the last episode)."""

    def score_group(self, examples, episodes):
        return [1.0] * (len(episodes) - 1)


class _NotAList:
    def score_group(self, examples, episodes):
        return None


@pytest.mark.parametrize("name", ["_test_short_group", "_test_not_a_list"])
def test_group_reward_of_wrong_shape_is_counted_for_every_episode(name, caplog):
    r = Rubric([{"name": name}, {"name": "_test_len"}])
    eps = [ep("ab"), ep("c"), ep("def")]
    r.score_group([{}] * 3, eps)
    assert r.errors[name] == 3 and r.errors["_test_len"] == 0
    assert [e.reward for e in eps] == [2.0, 1.0, 3.0]  # no episode got the buggy term, none was skipped
    assert all(e.reward_components[name] == 0.0 for e in eps)
    assert name in caplog.text and "3 episodes" in caplog.text


@pytest.mark.parametrize("weight", [float("nan"), float("inf"), "heavy", None])
def test_reward_weight_must_be_a_finite_number(weight):
    with pytest.raises(ConfigError, match=r"rewards\[1\]\.weight.*finite number"):
        Rubric([{"name": "_test_len"}, {"name": "_test_len", "weight": weight}])


class _StrictArgs:
    def __init__(self, lam: float = 0.5):
        if not 0 < lam <= 1:
            raise ValueError(f"lam must be in (0, 1], got {lam}")

    def score_group(self, examples, episodes):
        return [0.0] * len(episodes)


def test_reward_constructor_value_error_is_a_config_error_naming_the_key():
    with pytest.raises(ConfigError, match=r"rewards\[1\]\.args: reward '_test_strict_args'.*lam must be in"):
        Rubric([{"name": "_test_len"}, {"name": "_test_strict_args", "args": {"lam": 2.0}}])
