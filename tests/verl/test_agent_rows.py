"""rlreason.verl.agent_loop.episode_to_outputs: an Episode's Samples -> verl AgentLoopOutputs, checked with
verl's own AgentLoopOutput.as_dict (the conversion the V1 trainer puts into TransferQueue, reward placement
included): rows over verl's widths are refused, empty-response rows are dropped or padded."""

from __future__ import annotations

import pytest

from rlreason.types import Episode, Sample
from rlreason.verl.agent_loop import episode_to_outputs


def sample(prompt: int, response: int) -> Sample:
    return Sample(list(range(1, prompt + 1)), list(range(100, 100 + response)), [-0.1] * response, [1] * response)


def outputs(samples, **kw):
    ep = Episode(samples, transcript="x", metrics={"chunks": float(len(samples))})
    return episode_to_outputs(ep, reward=1.0, components={"math": 1.0}, env_name="markovian",
                              prompt_length=kw.get("prompt_length", 16), response_length=8, eos_id=7)


def test_over_long_prompt_is_an_error_not_a_truncation():
    """verl's agent loops left-truncate prompts; training on a context that was never sampled is wrong."""
    with pytest.raises(ValueError, match="data.max_prompt_length=16"):
        outputs([sample(10, 8), sample(20, 4)])


def test_over_long_response_is_an_error():
    with pytest.raises(ValueError, match="data.max_response_length=8"):
        outputs([sample(4, 9)])


def test_empty_chunk_is_dropped_and_verl_can_place_the_reward():
    outs = outputs([sample(4, 8), sample(6, 0)])
    assert len(outs) == 1 and outs[0].extra_fields.get("rlreason_final")
    for o in outs:
        d = o.as_dict()  # verl puts the reward on the last response token; an empty row raised IndexError
        assert float(d["rm_scores"].sum()) == 1.0
    assert outs[0].extra_fields["reward_extra_info"]["rollout/empty_rows_dropped"] == 1.0


def test_all_empty_episode_keeps_one_untrained_row_for_its_reward():
    (o,) = outputs([sample(4, 0)])
    assert o.response_ids == [7] and o.response_mask == [0] and o.reward_score == 1.0
    assert float(o.as_dict()["rm_scores"].sum()) == 1.0
