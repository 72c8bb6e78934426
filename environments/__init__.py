"""Built-in environments; importing this package registers them."""

from environments import longcot, markovian, single_turn  # noqa: F401
