"""Built-in rewards. Importing this package registers them (`rlreason.registry.REWARDS` imports it on
first lookup), so configs can name them; a user's own rewards register from their package instead."""

from rlreason.rewards import idk  # noqa: F401  (Auto-CEI's "I don't know" reward)
from rlreason.rewards import math  # noqa: F401  (registers math, boxed_format, reasoning_gym)
from rlreason.rewards import qa, search_cost  # noqa: F401  (qa_em, qa_f1, qa_answered; MASH's search_cost)
