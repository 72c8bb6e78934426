"""Built-in environments; importing this package registers them."""

from rlreason.environments import curriculum_ei  # noqa: F401  (Auto-CEI)
from rlreason.environments import longcot, markovian, single_turn  # noqa: F401
from rlreason.environments import pay_per_search  # noqa: F401  (MASH search environment)
