"""Transfer strategies as registered objects: one module per ``--strategy``, each a `Strategy` subclass.

``get_strategy(name)`` returns the object; `TransferConfig`, the plan, the engine check, the jobs and the card ask
it instead of comparing names. Adding a strategy is one module here (decorated with ``@register``) plus its test.
The import order below is the order the names are listed in messages.
"""

from .base import REGISTRY, ParamRoles, Strategy, get_strategy, needs_advisor, register, strategy_names
from . import full, linear_probe, partial, lp_ft, scratch, lora, auto  # noqa: E402,F401  (registers them)

__all__ = ["REGISTRY", "ParamRoles", "Strategy", "get_strategy", "needs_advisor", "register", "strategy_names"]
