"""The refuse-when-wrong baseline's training data (R-Tuning style, Zhang et al. 2023, the baseline Auto-CEI
compares against): the model's own answers, each incorrect one replaced by the refusal the curriculum_ei
environment teaches (`rlreason.rewards.idk.IDK_ANSWER`, `\\boxed{I don't know}`). Fine-tuned on, it learns to
refuse whatever it got wrong, which over-refuses: the effect Auto-CEI's curriculum is meant to avoid.

    keep_reasoning=True   the reasoning before the final answer is kept and only the answer is replaced:
                          "s1 = 3 + 4 = 8\\n\\boxed{8}" -> "s1 = 3 + 4 = 8\\n\\boxed{I don't know}"
                          (the refusal comes after as many steps as the model wrote, d counted as for Auto-CEI)
    keep_reasoning=False  the whole response becomes "\\boxed{I don't know}" (d = 0)

Correct answers pass unchanged. The final answer is the last \\boxed{} (or \\fbox{}), as the `idk` judge
reads it; a response without one (truncated, unparsable) is all reasoning and gets the refusal appended."""

from __future__ import annotations

from typing import Sequence


def refuse_when_wrong(responses: Sequence[str], correct: Sequence[bool], *, keep_reasoning: bool = True,
                      refusal: str | None = None) -> list[str]:
    """`responses` with each one whose `correct` flag is false replaced by a refusal (module doc);
    `refusal` defaults to the curriculum_ei environment's (rlreason.rewards, imported on use)."""
    if refusal is None:
        from rlreason.rewards.idk import IDK_ANSWER
        refusal = IDK_ANSWER
    if len(responses) != len(correct):
        raise ValueError(f"refuse_when_wrong: {len(responses)} responses but {len(correct)} correctness flags")
    out = []
    for text, ok in zip(responses, correct):
        if ok:
            out.append(text)
        elif not keep_reasoning:
            out.append(refusal)
        else:
            cut = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
            reasoning = (text if cut < 0 else text[:cut]).rstrip()
            out.append(f"{reasoning}\n{refusal}" if reasoning.strip() else refusal)
    return out
